"""auditd and Samba full_audit: real-format lines written from the documented formats."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dwcore.agents.audit_auditd import AuditdParser, parse_lines
from dwcore.agents.audit_follow import LogFollower
from dwcore.agents.audit_join import AuditJoin, AuditSource
from dwcore.agents.audit_record import AuditRecord
from dwcore.agents.audit_samba import SambaParser
from dwcore.agents.audit_samba import parse_lines as parse_samba
from dwcore.schemas.event import Activity, Attribution, make_event
from dwcore.schemas.paths import name_bytes

DATA = Path(__file__).parent / "data"
NAMES = {0: "root", 1001: "alice", 1002: "bob"}


def _auditd() -> tuple[list[AuditRecord], AuditdParser]:
    parser = AuditdParser(uid_name=lambda uid: NAMES.get(uid, str(uid)))
    lines = (DATA / "audit.log").read_bytes().splitlines()
    return list(parse_lines(lines, parser)), parser


def test_auditd_joins_interleaved_records_of_one_event() -> None:
    records, _parser = _auditd()
    by_id = {r.event_id: r for r in records}
    ren = by_id["501"]
    # relative hex-encoded names (with a space) are joined with the CWD record
    assert ren.operation == "rename"
    assert ren.path == "/srv/share/projects/q3 report.xlsx"
    assert ren.new_path == "/srv/share/projects/q3 report.xlsx.locked"
    assert (ren.user_name, ren.user_uid, ren.auid, ren.auid_name) == ("root", "0", "1001", "alice")
    assert (ren.process_pid, ren.process_exe, ren.syscall) == (4242, "/usr/bin/mv", "renameat2")
    assert ren.time == 1732780800123


def test_auditd_hex_name_that_is_not_utf8_round_trips() -> None:
    records, _ = _auditd()
    create = next(r for r in records if r.event_id == "502")
    assert create.operation == "create" and create.user_name == "bob" and create.names_escaped
    assert name_bytes(create.path, True) == b"/srv/share/data/tr\xe4in.csv"


def test_auditd_enriched_names_and_unset_auid() -> None:
    records, _ = _auditd()
    rm = next(r for r in records if r.event_id == "503")
    assert rm.operation == "delete" and rm.path == "/srv/share/old/notes.txt"
    assert rm.user_name == "alice" and rm.auid == "" and rm.auid_name == "unset"
    assert rm.process_exe == "/usr/sbin/smbd"


def test_auditd_read_open_and_partial_events() -> None:
    records, parser = _auditd()
    read = next(r for r in records if r.event_id == "504")
    assert read.operation == "read" and read.path == "/srv/share/data/train.csv"
    ids = {r.event_id for r in records}
    assert ids == {"501", "502", "503", "504"}
    reasons = [(r.line, r.reason) for r in parser.rejected]
    assert any("505" in why and "SYSCALL without PATH" in why for _, why in reasons)  # cut off by a rotation
    assert any("599" in why and "without their SYSCALL" in why for _, why in reasons)
    assert any("not an audit record" in why for _, why in reasons)
    assert any("600" in why for _, why in reasons)  # the log ends inside event 600
    assert parser.counters["ignored"] == 1  # DAEMON_START is not a file event


def test_auditd_pending_events_are_bounded() -> None:
    parser = AuditdParser(max_pending=10)
    for i in range(1000):
        parser.feed(f"type=CWD msg=audit(1.000:{i}): cwd=\"/\"".encode(), i)
    assert len(parser._pending) <= 10


def test_samba_full_audit_lines() -> None:
    now = 1795849200.0  # 2026-11-28
    parser = SambaParser(shares={"projects": "/srv/projects", "models": "/srv/models"}, now=lambda: now)
    records = list(parse_samba((DATA / "full_audit.log").read_bytes().splitlines(), parser))
    ops = [(r.user_name, r.operation, r.path, r.new_path) for r in records]
    assert ops[:5] == [
        ("alice", "update", "/srv/projects/data/train.csv", None),
        ("bob", "rename", "/srv/projects/data/a.csv", "/srv/projects/data/a.csv.locked"),
        ("bob", "delete", "/srv/projects/data/b.csv", None),
        ("bob", "create", "/srv/projects/data/new.csv", None),
        ("bob", "read", "/srv/projects/data/readme.txt", None),
    ]
    first = records[0]
    assert (first.client_ip, first.share, first.machine, first.source) == ("10.0.0.5", "projects", "laptop-7", "samba")
    failed = records[5]
    assert failed.operation == "create" and failed.success is False
    carol = records[6]
    assert carol.names_escaped and name_bytes(carol.path, True) == b"/srv/models/caf\xe9/model.bin"
    assert len(records) == 7 and parser.counters["ignored"] == 1
    assert records[1].time == 1795849202123
    reasons = [r.reason for r in parser.rejected]
    assert len(reasons) == 3
    assert any("expected 4 prefix fields" in r for r in reasons)
    assert any("not a syslog line" in r for r in reasons)
    assert any("no user" in r for r in reasons)


def test_follower_reads_across_rename_rotation_and_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"old history\n")
    f = LogFollower(str(log))
    assert f.read() == []  # starts at the end: history is not replayed
    with open(log, "ab") as w:
        w.write(b"one\ntw")
    assert f.read() == [b"one"]
    with open(log, "ab") as w:
        w.write(b"o\nthree\n")
    os.rename(log, tmp_path / "audit.log.1")  # logrotate: rename, then a new file
    with open(tmp_path / "audit.log.1", "ab") as w:
        w.write(b"written to the old file after the rename\n")
    log.write_bytes(b"four\n")
    assert f.read() == [b"two", b"three", b"written to the old file after the rename", b"four"]
    with open(log, "r+b") as w:  # copytruncate
        w.truncate(0)
    log.write_bytes(b"five\n")
    assert f.read() == [b"five"]
    assert f.counters["rotations"] == 1 and f.counters["truncations"] == 1
    f.close()


def _ev(activity: Activity, path: str, t: int, new: str | None = None):
    return make_event(activity, uid=f"u{t}{path}", time=t, user_name="owner", device="fs1", file_path=path,
                      file_new_path=new)


def test_join_matches_by_path_operation_and_time_and_falls_back_to_owner() -> None:
    records, _ = _auditd()
    join = AuditJoin([], window_ms=2000, clock=lambda: 1732780900.0)
    join.add(records)
    batch = [
        _ev(Activity.RENAME, "/srv/share/projects/q3 report.xlsx", 1732780800200,
            "/srv/share/projects/q3 report.xlsx.locked"),
        _ev(Activity.DELETE, "/srv/share/old/notes.txt", 1732780801010),
        _ev(Activity.DELETE, "/srv/share/old/notes.txt", 1732780809000),  # too late: fallback
        _ev(Activity.UPDATE, "/srv/share/data/train.csv", 1732780801500),  # only a read on record
        _ev(Activity.CREATE, "/srv/share/elsewhere.txt", 1732780800200),
    ]
    out = join(batch)
    assert len(out) == len(batch)  # never drops
    assert (out[0].attribution, out[0].user_name, out[0].auid_name, out[0].process_exe) == (
        Attribution.AUDITD, "root", "alice", "/usr/bin/mv")
    assert out[1].attribution == Attribution.AUDITD and out[1].user_name == "alice"
    assert [e.attribution for e in out[2:]] == [Attribution.OWNER] * 3
    assert [e.user_name for e in out[2:]] == ["owner"] * 3
    assert join.counters["matched"] == 2 and join.counters["fallback"] == 3


def test_join_prefers_samba_over_smbds_own_syscalls(tmp_path: Path) -> None:
    rec_a = AuditRecord(source="auditd", time=1000, operation="delete", path="/s/x", user_name="alice",
                        process_exe="/usr/sbin/smbd")
    rec_s = AuditRecord(source="samba", time=1010, operation="delete", path="/s/x", user_name="alice",
                        client_ip="10.0.0.5", share="s")
    join = AuditJoin([], clock=lambda: 10.0)
    join.add([rec_a, rec_s])
    out = join([_ev(Activity.DELETE, "/s/x", 1001)])
    assert out[0].attribution == Attribution.SAMBA and out[0].client_ip == "10.0.0.5"


def test_join_follows_a_live_log_and_waits_briefly_for_it(tmp_path: Path) -> None:
    import threading
    import time

    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    src = AuditSource("auditd", LogFollower(str(log)), AuditdParser(uid_name=lambda u: NAMES.get(u, str(u))))
    join = AuditJoin([src], wait_ms=500)
    now = time.time()
    ms = int(now * 1000)
    stamp = f"{ms // 1000}.{ms % 1000:03d}:77"
    lines = (DATA / "audit.log").read_text(errors="surrogateescape").splitlines()
    ev503 = [ln.replace("1732780801.000:503", stamp) for ln in lines if ":503)" in ln]
    join.poll()  # opens the log at its end

    def late_writer() -> None:
        time.sleep(0.1)
        with open(log, "a", errors="surrogateescape") as w:
            w.write("\n".join(ev503) + "\n")

    t = threading.Thread(target=late_writer)
    t.start()
    out = join([_ev(Activity.DELETE, "/srv/share/old/notes.txt", ms)])
    t.join()
    assert out[0].attribution == Attribution.AUDITD and out[0].user_name == "alice"


@pytest.mark.parametrize("fmt", ["auditd", "samba"])
def test_cli_audit_parse_prints_records_and_reasons(fmt: str) -> None:
    import json
    import subprocess
    import sys

    path = DATA / ("audit.log" if fmt == "auditd" else "full_audit.log")
    proc = subprocess.run([sys.executable, "-m", "dataward.cli", "agent", "audit", "parse", str(path),
                           "--format", fmt, "--share", "projects=/srv/projects"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == (4 if fmt == "auditd" else 7)
    assert all(r["user_name"] and r["operation"] and r["path"] for r in rows)
    assert "rejected" in proc.stderr and "line" in proc.stderr
    if fmt == "samba":
        assert rows[0]["path"] == "/srv/projects/data/train.csv" and rows[0]["client_ip"] == "10.0.0.5"
