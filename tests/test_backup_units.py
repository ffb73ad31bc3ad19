"""Pure parts of the backup controller: which alerts halt, which version a restore picks, which
keys a restore refuses."""
from __future__ import annotations

import os

from dwcore.schemas.alert import Alert, Severity
from dwcore.sinks.backup_controller import HaltPolicy, should_halt
from dwcore.sinks.backup_model import Incident
from dwcore.sinks.backup_restore import pick_versions, safe_target
from dwcore.sinks.backup_s3 import Version, key_for, rel_bytes


def alert(severity: str = "high", user: str = "alice", paths: list[str] | None = None, drill: bool = False,
          shares: list[str] | None = None) -> Alert:
    sev = Severity(severity)
    return Alert(uid="inc-1", title="t", rule="mass_rename", rule_uid="r", severity=sev, severity_id=sev.ocsf_id,
                 user=user, first_seen=1000, detected_at=2000, signal="renames", observed=30, threshold=25,
                 window_s=10, file_count=30, paths=paths if paths is not None else ["/srv/data/a.locked"],
                 shares=shares or [], drill=drill)


def test_halt_needs_the_configured_severity() -> None:
    assert should_halt(alert("high"), HaltPolicy(min_severity="high"))
    assert should_halt(alert("critical"), HaltPolicy(min_severity="high"))
    assert not should_halt(alert("medium"), HaltPolicy(min_severity="high"))
    assert should_halt(alert("medium"), HaltPolicy(min_severity="medium"))


def test_halt_only_for_protected_users_and_paths() -> None:
    assert not should_halt(alert(user="bob"), HaltPolicy(users=["alice"]))
    assert should_halt(alert(user="alice"), HaltPolicy(users=["alice"]))
    assert should_halt(alert(), HaltPolicy(paths=["/srv/data"]))
    assert not should_halt(alert(), HaltPolicy(paths=["/srv/database"]))  # a prefix of the name is not "under"
    assert should_halt(alert(paths=[], shares=["/srv"]), HaltPolicy(paths=["/srv/data"]))  # share holds our path
    # An alert that names no path cannot be ruled out: zero trust halts.
    assert should_halt(alert(paths=[]), HaltPolicy(paths=["/srv/data"]))


def test_drill_alerts_halt_unless_configured_otherwise() -> None:
    assert should_halt(alert(drill=True), HaltPolicy())
    assert not should_halt(alert(drill=True), HaltPolicy(halt_on_drill=False))


def v(key: str, vid: str, t: int, delete: bool = False) -> Version:
    return Version(key, vid, t, 10, False, delete)


def test_pick_newest_clean_version_not_after_the_point() -> None:
    versions = [v("a", "a1", 0), v("a", "a2", 0), v("a", "a3", 0), v("b", "b1", 0), v("b", "bdel", 0, True),
                v("c", "c1", 0)]
    known = {"a1": (100, ""), "a2": (200, ""), "a3": (300, "inc"), "b1": (150, ""), "c1": (900, "")}
    picks = {p.key: p for p in pick_versions(versions, 250, known, [])}
    assert picks["a"].version.version_id == "a2"  # a3 is suspect anyway and after the point
    assert picks["b"].version.version_id == "b1"  # the delete marker is never restored nor hides b1
    assert picks["c"].version is None and picks["c"].skipped_suspect == 1
    picks = {p.key: p for p in pick_versions(versions, 10_000, known, [])}
    assert picks["a"].version.version_id == "a2"  # the suspect a3 is skipped at any point in time


def test_unknown_versions_inside_an_incident_window_are_suspect() -> None:
    inc = Incident(uid="i", rule="r", severity="high", user="u", first_seen=5_000, detected_at=5_100,
                   received_at=5_100, halted_at=5_200, resumed_at=9_000, resumed_by="ops")
    # Versions dataward did not write (e.g. written by the attacker with stolen keys): S3 time + 999 ms.
    versions = [v("k", "x1", 1_000), v("k", "x2", 6_000), v("k", "x3", 10_000)]
    picks = pick_versions(versions, 20_000, {}, [inc])
    assert picks[0].version.version_id == "x3"  # after the resume: clean again
    picks = pick_versions(versions, 9_500, {}, [inc])
    assert picks[0].version.version_id == "x1"


def test_restore_refuses_keys_that_leave_the_target(tmp_path) -> None:
    target = str(tmp_path)
    for rel in [b"../etc/passwd", b"a/../../x", b"/etc/passwd", b"a//b", b"", b"./a", b"a\x00b"]:
        assert safe_target(target, rel) is None, rel
    assert safe_target(target, b"a/b.txt") == os.path.join(os.fsencode(target), b"a/b.txt")
    assert safe_target(target, b"\xff\xfe-name") is not None


def test_keys_round_trip_non_utf8_names() -> None:
    raw = b"dir/\xff\xfe[bold]x\\y"
    key, text, escaped = key_for("pre", raw)
    assert key.startswith("pre/") and escaped
    assert rel_bytes(text, escaped) == raw


def test_own_data_dir_inside_the_tree_is_never_uploaded(tmp_path) -> None:
    from dwcore.sinks.backup_gate import Gate
    from dwcore.sinks.backup_journal import Journal
    from dwcore.sinks.backup_uploader import Uploader, scan_tree

    state = tmp_path / ".dataward"
    journal = Journal(state / "backup")
    (tmp_path / "a.txt").write_bytes(b"a")
    up = Uploader(None, journal, Gate(), "b", "", str(tmp_path), exclude=[str(state)])
    assert scan_tree(up.root, up.exclude) == [b"a.txt"]
    # A change event for the journal itself (continuous mode) is not a file to back up: no S3 call.
    assert up._one(b".dataward/backup/journal.sqlite") == ("gone", None)
    journal.close()
