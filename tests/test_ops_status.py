"""`dataward status` against a real chDB store holding real rows of every section: agents (fresh,
stale, spooling), open/closed/drill incidents, deliveries by status, a backup halt; hostile device,
user and path strings shown inert on screen and exact in JSON."""
from __future__ import annotations

import json
import time

import pytest

from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.ddl import (
    BACKUP_AUDIT_COLUMNS,
    BACKUP_AUDIT_TABLE,
    BACKUP_RUN_COLUMNS,
    BACKUP_RUNS_TABLE,
    HEARTBEAT_COLUMNS,
    HEARTBEATS_TABLE,
)
from dwcore.schemas.delivery import Delivery
from dwcore.schemas.heartbeat import Heartbeat
from dwcore.sinks.backup_model import AuditRow, RunRow
from dwcore.sinks.store import Store
from tests.procs import run_cli

EVIL_HOST = "fs\x1b[2J\x1b]8;;http://evil\x07[link=http://evil]x[/link]"
EVIL_USER = "mal\u202elory[bold]"
NOW = 0  # set when the rows are written, so their ages are as meant whenever the test runs


def _alert(uid: str, version: int, status: str = "open", drill: bool = False, user: str = "alice",
           severity: Severity = Severity.CRITICAL) -> Alert:
    return Alert(uid=uid, title=f"Mass rename by {user}", rule="mass_rename", rule_uid="r1", severity=severity,
                 severity_id=severity.ocsf_id, user=user, first_seen=NOW - 60_000, detected_at=NOW - 50_000,
                 signal="renames", observed=100, threshold=25, window_s=10, file_count=100 * version,
                 paths=["/srv/a.locked"], devices=[EVIL_HOST], version=version, status=status, drill=drill)


def _delivery(uid: str, status: str, attempt: int = 1) -> Delivery:
    return Delivery(time=NOW - 1_000, alert_uid=uid, alert_version=1, destination="oncall", kind="webhook",
                    attempt=attempt, status=status, http_status=200 if status == "delivered" else None,
                    latency_ms=12)


@pytest.fixture
def state(tmp_path):
    global NOW
    NOW = int(time.time() * 1000)
    with Store.open(f"chdb://{tmp_path / 'chdb'}") as store:
        w = store.writer
        w.ensure_schema()
        w.insert(HEARTBEATS_TABLE, HEARTBEAT_COLUMNS, [
            Heartbeat(time=NOW - 120_000, device=EVIL_HOST, agent="file", version="0.1", events_seen=10,
                      spool_depth=0),
            Heartbeat(time=NOW - 1_000, device=EVIL_HOST, agent="file", version="0.1", events_seen=99,
                      spool_depth=1234, lag_ms=8_000, status="kafka_unreachable"),
            Heartbeat(time=NOW - 3_600_000, device="fs-old", agent="s3", version="0.1", events_seen=5,
                      spool_depth=0),
        ])
        w.insert_alerts([_alert("inc-open", 1), _alert("inc-open", 2), _alert("inc-closed", 1),
                         _alert("inc-closed", 2, status="closed"), _alert("inc-drill", 1, drill=True),
                         _alert("inc-evil", 1, user=EVIL_USER, severity=Severity.HIGH)])
        w.insert_deliveries([_delivery("inc-open", "delivered"), _delivery("inc-open", "delivered"),
                             _delivery("inc-evil", "retry"), _delivery("inc-drill", "skipped_drill", 0)])
        w.insert(BACKUP_AUDIT_TABLE, BACKUP_AUDIT_COLUMNS, [
            AuditRow(time=NOW - 40_000, action="halt", incident="inc-open", who="controller", detail="{}"),
            AuditRow(time=NOW - 90_000, action="halt", incident="inc-old", who="controller", detail="{}"),
            AuditRow(time=NOW - 80_000, action="resume", incident="inc-old", who="bob", detail="{}"),
        ])
        w.insert(BACKUP_RUNS_TABLE, BACKUP_RUN_COLUMNS, [
            RunRow(run_id="r1", started_at=NOW - 100_000, updated_at=NOW - 40_000, finished_at=NOW - 40_000,
                   mode="continuous", source="/srv/share", bucket="backup", prefix="fs1/", status="halted",
                   files=10, bytes=1000, skipped=0, errors=0, manifest_key="", reason="incident inc-open"),
        ])
    return tmp_path


def test_status_json_has_every_section_from_the_store(state):
    res = run_cli("status", "--data-dir", str(state), "--format", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    agents = {(a["device"], a["agent"]): a for a in doc["agents"]}
    live = agents[(EVIL_HOST, "file")]  # exact in JSON, the latest heartbeat wins
    assert (live["spool_depth"], live["lag_ms"], live["status"], live["stale"]) == (1234, 8000, "kafka_unreachable",
                                                                                 False)
    assert agents[("fs-old", "s3")]["stale"] is True  # silent for an hour (heartbeats every 30 s)
    assert doc["open_incidents"] == 3
    incidents = {i["uid"]: i for i in doc["incidents"]}
    assert set(incidents) == {"inc-open", "inc-drill", "inc-evil"}  # closed is not open
    assert incidents["inc-open"]["files"] == 200 and incidents["inc-drill"]["drill"] is True
    assert doc["incidents"][0]["severity"] == "critical" and incidents["inc-evil"]["user"] == EVIL_USER
    by_status = {d["status"]: d["count"] for d in doc["deliveries"]}
    assert by_status == {"delivered": 2, "retry": 1, "skipped_drill": 1}
    backup = doc["backup"]
    assert backup["state"] == "halted" and [h["incident"] for h in backup["halts"]] == ["inc-open"]
    assert backup["runs"][0]["status"] == "halted" and doc["errors"] == {}


def test_status_screen_renders_hostile_strings_inert(state):
    res = run_cli("status", "--data-dir", str(state), env={"COLUMNS": "250"})
    assert res.returncode == 0, res.stderr
    screen = res.stdout
    assert "\x1b" not in screen and "\u202e" not in screen and "\x07" not in screen
    assert "\\x1b[2J" in screen and "[link=http://evil]" in screen and "\\u202e" in screen
    assert "[bold]" in screen  # markup in a user name stays literal
    for text in ("open incidents: 3", "kafka_unreachable", "stale", "1,234", "skipped_drill", "HALTED",
                 "inc-open", "drill"):
        assert text in screen, text


def test_status_of_an_empty_store_and_of_none(tmp_path):
    with Store.open(f"chdb://{tmp_path / 'chdb'}") as store:
        store.writer.ensure_schema()
    res = run_cli("status", "--data-dir", str(tmp_path), "--format", "json")
    doc = json.loads(res.stdout)
    assert (doc["agents"], doc["open_incidents"], doc["backup"]["state"]) == ([], 0, "not configured")
    missing = run_cli("status", "--data-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "cannot read the store" in missing.stderr


def test_embedded_run_shows_in_status_through_its_heartbeats(tmp_path, dataward_proc):
    """`dataward run` writes its agent's heartbeats into its own store: `dataward status` lists it,
    fresh, with the events it saw and nothing waiting for the store."""
    share, state = tmp_path / "share", tmp_path / "state"
    share.mkdir()
    run = dataward_proc("run", "--watch", str(share), "--data-dir", str(state),
                        env={"DATAWARD_CAPTURE_HEARTBEAT_S": "1", "DATAWARD_AGENT_DEVICE": "fs-embedded"})
    run.wait_ready(90)
    for i in range(5):
        (share / f"f{i}.txt").write_text("x")

    def agent_row():
        res = run_cli("status", "--data-dir", str(state), "--format", "json")
        if res.returncode != 0:
            return None
        rows = [a for a in json.loads(res.stdout)["agents"] if a["device"] == "fs-embedded"]
        # seen by the watcher, then stored: nothing left waiting in the write-ahead log
        return rows[0] if rows and rows[0]["events_seen"] >= 5 and rows[0]["spool_depth"] == 0 else None

    from tests.procs import wait_for

    row = wait_for(agent_row, 60, interval=1, what="the run's heartbeat with its events in status")
    assert (row["agent"], row["status"], row["stale"], row["lag_ms"]) == ("file", "ok", False, None)
    assert row["age_s"] < 10
    screen = run_cli("status", "--data-dir", str(state), env={"COLUMNS": "200"})
    assert "fs-embedded" in screen.stdout and "no heartbeat stored yet" not in screen.stdout
    assert run.stop() == 0
