"""`dataward report ...` and `dataward query --format` against a real chDB store holding an incident:
custody, who-changed, blast radius and restore list, timeline with plot, inventory, hostile names."""
from __future__ import annotations

import csv
import io
import json
import re
import time

import pytest
from typer.testing import CliRunner

from dataward.cli import app
from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.store import Store

NOW = (time.time_ns() // 1_000_000) // 60_000 * 60_000 - 3600_000  # an hour ago, on a minute
HOSTILE_PATH = "/srv/train/we'ird\\name\n'; DROP TABLE events; --\x1b]8;;http://evil\x07[bold]x[/bold].csv"
HOSTILE_USER = "mal'lory\"\\; DROP"
LONG_PATH = "/srv/train/" + "/".join(f"level{i:02d}-directory-with-a-long-name" for i in range(8)) + "/END.parquet"

runner = CliRunner()


def ev(uid, t, user, activity, path, **kw):
    if activity == Activity.RENAME:
        kw.setdefault("file_new_path", path + ".locked")
    return make_event(activity, uid=uid, time=NOW + t, user_name=user, device=kw.pop("device", "fs1"),
                      share="train", file_path=path, **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    events = [ev(f"pre{i}", i * 1000, "alice", Activity.UPDATE, f"/srv/train/a{i}.csv", bytes_written=10)
              for i in range(10)]
    events += [ev(f"ren{i}", 60_000 + i * 100, "alice", Activity.RENAME, f"/srv/train/b{i}.csv",
                  device="fs2" if i == 4 else "fs1") for i in range(5)]
    events += [
        ev("note", 61_000, "alice", Activity.CREATE, "/srv/train/README-RANSOM.txt", bytes_written=500),
        ev("note2", 61_500, "alice", Activity.UPDATE, "/srv/train/README-RANSOM.txt", bytes_written=100),
        ev("del", 62_000, "alice", Activity.DELETE, "/srv/train/sub/c.csv"),
        ev("enc", 63_000, "alice", Activity.UPDATE, "/srv/train/sub/d.csv", bytes_written=4096, entropy=7.99),
        ev("bob1", 120_000, "bob", Activity.UPDATE, "/srv/train/a1.csv", bytes_written=7),
        ev("bob2", 121_000, "bob", Activity.READ, "/srv/train/a2.csv"),
        ev("hostile", 130_000, HOSTILE_USER, Activity.UPDATE, HOSTILE_PATH),
        ev("long", 131_000, "carol", Activity.CREATE, LONG_PATH),
    ]
    alert = Alert(uid="inc-1", title="Mass rename by alice", rule="mass_rename", rule_uid="r1",
                  severity=Severity.CRITICAL, severity_id=5, user="alice", first_seen=NOW + 60_000,
                  detected_at=NOW + 60_400, signal="renames", observed=5, threshold=3, window_s=10, file_count=5,
                  paths=[], devices=["fs1", "fs2"], last_seen=NOW + 63_000)
    other = Alert(uid="inc-2", title="Ransom note", rule="ransom_note", rule_uid="r2", severity=Severity.HIGH,
                  severity_id=4, user="alice", first_seen=NOW + 61_000, detected_at=NOW + 61_000, signal="notes",
                  observed=1, threshold=1, window_s=10, file_count=1, paths=[])
    with Store.open(f"chdb://{root / 'chdb'}", retention_days=400) as store:
        store.writer.ensure_schema()
        store.writer.insert_events(events)
        store.writer.insert_alerts([alert, other])
        store._backend.command(  # inventory rows as the inventory scan writes them
            "INSERT INTO dataward.inventory (scan_id, scanned_at, device, root, path, size, mtime, owner, "
            "file_type) VALUES "
            f"('s1', fromUnixTimestamp64Milli({NOW}), 'fs1', '/srv/train', '/srv/train/x', 100, "
            f"fromUnixTimestamp64Milli({NOW - 400 * 86400_000}), 'alice', 'parquet'),"
            f"('s1', fromUnixTimestamp64Milli({NOW}), 'fs1', '/srv/train', '/srv/train/y', 300, "
            f"fromUnixTimestamp64Milli({NOW - 10 * 86400_000}), 'bob', 'csv'),"
            # an older scan of the same root: superseded, not counted
            f"('s0', fromUnixTimestamp64Milli({NOW - 86400_000}), 'fs1', '/srv/train', '/srv/train/z', 999, "
            f"fromUnixTimestamp64Milli({NOW}), 'eve', 'csv')"
        )
    return str(root)


def cli(data_dir, *args, ok=True):
    result = runner.invoke(app, [*args, "--data-dir", data_dir], env={"COLUMNS": "100"})
    if ok:
        assert result.exit_code == 0, result.output
    return result


def as_json(result):
    return json.loads(result.stdout)


def test_custody_of_a_path_is_exact_and_in_order(data_dir):
    doc = as_json(cli(data_dir, "report", "custody", "/srv/train/a1.csv", "-f", "json"))
    rows = doc["tables"]["custody of /srv/train/a1.csv"]
    # a1.csv only: not a10.csv or anything that merely starts with the same letters
    assert [(r["user_name"], r["activity_name"], r["path"]) for r in rows] == [
        ("alice", "Update", "/srv/train/a1.csv"), ("bob", "Update", "/srv/train/a1.csv")]
    assert rows[0]["time"].startswith(time.strftime("%Y-", time.gmtime(NOW / 1000)))  # a date on every time
    assert doc["summary"]["users"] == ["alice", "bob"]


def test_custody_of_a_prefix_follows_renames(data_dir):
    rows = [json.loads(line) for line in cli(data_dir, "report", "custody", "/srv/train/", "-f", "jsonl").stdout
            .splitlines()]
    renamed = [r for r in rows if r["uid"] == "ren0"]
    assert {(r["role"], r["path"]) for r in renamed} == {("path", "/srv/train/b0.csv"),
                                                         ("new_path", "/srv/train/b0.csv.locked")}
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime((NOW + 100_000) / 1000))
    later = as_json(cli(data_dir, "report", "custody", "/srv/train", "--since", since, "-f", "json"))
    assert {r["uid"] for r in later["tables"]["custody of /srv/train"]} == {"bob1", "bob2", "hostile", "long"}


def test_who_changed_counts_changes_not_reads(data_dir):
    out = cli(data_dir, "report", "who-changed", "/srv/train", "--since", "2h", "-f", "csv").stdout
    rows = {r["user_name"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows["bob"]["changes"] == "1" and json.loads(rows["bob"]["activities"]) == ["Update"]
    assert rows["alice"]["changes"] == str(10 + 10 + 4)  # renames count under both paths
    assert json.loads(rows["alice"]["devices"]) == ["fs1", "fs2"]
    assert HOSTILE_USER in rows  # a quote, a backslash and '; DROP in a user name are data


def test_incident_blast_radius_and_restore_list(data_dir, tmp_path):
    restore = tmp_path / "restore.txt"
    doc = as_json(cli(data_dir, "report", "incident", "inc-1", "-f", "json", "--restore-list", str(restore)))
    s = doc["summary"]
    assert (s["user"], s["severity"], s["events"]) == ("alice", "critical", 9)
    assert s["hosts"] == ["fs1", "fs2"] and s["shares"] == ["train"]
    assert s["files"] == 8 and s["directories"] == 2
    assert s["bytes_written"] == 500 + 100 + 4096
    assert s["first_event"].endswith(time.strftime("%H:%M:00.000", time.gmtime((NOW + 60_000) / 1000)))
    assert s["rules_fired"] == ["mass_rename", "ransom_note"]
    expected = [f"/srv/train/b{i}.csv" for i in range(5)] + ["/srv/train/sub/c.csv", "/srv/train/sub/d.csv"]
    files = doc["tables"]["files to restore for incident inc-1"]
    assert [f["path"] for f in files] == expected  # the ransom note it created is not restored
    assert files[0]["renamed_to"] == "/srv/train/b0.csv.locked"
    assert restore.read_text().splitlines() == expected


def test_what_the_user_touched_in_the_five_minutes_before(data_dir):
    doc = as_json(cli(data_dir, "report", "incident", "inc-1", "--before", "5m", "--events", "-f", "json"))
    events = doc["tables"]["events of incident inc-1"]
    assert [e["uid"] for e in events[:10]] == [f"pre{i}" for i in range(10)]
    assert len(events) == 19 and all(e["uid"] not in ("bob1", "hostile") for e in events)
    missing = cli(data_dir, "report", "incident", "no-such", ok=False)
    assert missing.exit_code == 1 and "no incident" in missing.output


def test_timeline_with_incident_markers_and_plot(data_dir, tmp_path):
    png = tmp_path / "alice.png"
    result = cli(data_dir, "report", "timeline", "--user", "alice", "--around", "inc-1", "--plot", str(png))
    assert "mass_rename" in result.stdout and "Rename" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    doc = as_json(cli(data_dir, "report", "timeline", "--user", "alice", "--around", "inc-1", "-f", "json"))
    rows = doc["tables"]["activity of alice per minute"]
    per_min = {(r["activity_name"], r["minute"][-8:]): r["events"] for r in rows}
    minute0 = time.strftime("%H:%M:00", time.gmtime(NOW / 1000))
    minute1 = time.strftime("%H:%M:00", time.gmtime((NOW + 60_000) / 1000))
    assert per_min == {("Update", minute0): 10, ("Rename", minute1): 5, ("Create", minute1): 1,
                       ("Update", minute1): 2, ("Delete", minute1): 1}
    assert [a["uid"] for a in doc["tables"]["alerts about alice"]] == ["inc-1", "inc-2"]


def test_inventory_summarises_the_newest_scan(data_dir):
    doc = as_json(cli(data_dir, "report", "inventory", "-f", "json"))
    rows = {(r["by"], r["key"]): r for r in doc["tables"]["inventory"]}
    assert doc["summary"]["files"] == 2 and doc["summary"]["bytes"] == 400
    assert rows[("owner", "bob")]["share_of_bytes"] == 0.75
    assert ("owner", "eve") not in rows  # the older scan is superseded
    assert rows[("age", "4: 1-2 years")]["files"] == 1 and rows[("type", "parquet")]["bytes"] == 100


def test_hostile_names_stored_verbatim_and_shown_inert(data_dir):
    sql = "SELECT user_name, file_path FROM events WHERE uid = 'hostile'"
    doc = as_json(cli(data_dir, "query", sql, "-f", "json"))
    assert doc == [{"user_name": HOSTILE_USER, "file_path": HOSTILE_PATH}]
    tsv = cli(data_dir, "query", sql, "-f", "tsv").stdout.splitlines()
    assert len(tsv) == 2 and tsv[1].split("\t")[1] == HOSTILE_PATH.replace("\\", "\\\\").replace("\n", "\\n")
    for fmt in ("table", "vertical"):
        shown = cli(data_dir, "report", "custody", HOSTILE_PATH, "-f", fmt).stdout
        assert "\x1b" not in shown and "\x07" not in shown  # no escape sequence reaches the terminal
        assert "custody of" in shown and "(1 rows)" in shown
    vertical = cli(data_dir, "report", "custody", HOSTILE_PATH, "-f", "vertical").stdout
    assert "user_name:     mal'lory\"\\\\; DROP\n" in vertical  # the backslash doubled, so escapes are unambiguous
    vertical = cli(data_dir, "query", sql, "-f", "vertical").stdout
    shown_path = "/srv/train/we'ird\\\\name\\n'; DROP TABLE events; --\\x1b]8;;http://evil\\x07[bold]x[/bold].csv"
    assert f"file_path: {shown_path}\n" in vertical


def test_long_paths_are_never_cut(data_dir):
    for args in (("query", "SELECT file_path, user_name, device, share FROM events WHERE uid = 'long'"),
                 ("report", "custody", LONG_PATH)):
        table = cli(data_dir, *args).stdout
        assert "…" not in table
        assert "END.parquet" in table.replace("\n", "").replace("│", "").replace(" ", "")
    vertical = cli(data_dir, "report", "custody", LONG_PATH, "-f", "vertical").stdout
    assert re.search(r"\npath:\s+" + re.escape(LONG_PATH) + "\n", vertical)
