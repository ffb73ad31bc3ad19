"""Never blind: a rescan diffed against the last snapshot reports what the agent did not see."""
from __future__ import annotations

import os
import time
from pathlib import Path

from dwcore.agents.reconcile import ALARM_BLIND, BlindGuard, Entry, Reconciler, diff, scan
from dwcore.schemas.event import AccessEvent, Activity
from dwcore.schemas.paths import name_bytes


class Got:
    def __init__(self) -> None:
        self.events: list[AccessEvent] = []

    def __call__(self, batch: list[AccessEvent]) -> None:
        self.events.extend(batch)

    def of(self, activity: Activity) -> set[str]:
        return {os.path.basename(e.file_new_path or e.file_path) for e in self.events if e.activity_id == activity}


def _tree(root: Path) -> None:
    (root / "keep.txt").write_text("same")
    (root / "edit.csv").write_text("a,b\n1,2\n")
    (root / "old.docx").write_text("doc")
    (root / "gone.txt").write_text("bye")
    (root / "dir").mkdir()
    for i in range(3):
        (root / "dir" / f"c{i}.txt").write_text("x")
    (root / "rmdir").mkdir()
    (root / "rmdir" / "inner.txt").write_text("x")


def test_changes_while_stopped_are_reported_once_and_marked(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    _tree(root)
    got = Got()
    rec = Reconciler([str(root)], tmp_path / "state", "fs1", got, agent_user="dataward")
    rec.snapshot_all()  # the agent stops here
    time.sleep(0.01)
    (root / "edit.csv").write_text("a,b\n1,2\n3,4\n")
    (root / "old.docx").rename(root / "old.docx.locked")
    (root / "gone.txt").unlink()
    (root / "new.txt").write_text("new")
    (root / "dir").rename(root / "moved")
    (root / "rmdir" / "inner.txt").unlink()
    (root / "rmdir").rmdir()
    raw = os.fsencode(str(root)) + b"/r\xe9sum\xe9.txt"
    with open(raw, "wb") as f:
        f.write(b"x")
    n = rec.reconcile(os.fsencode(str(root)))
    assert got.of(Activity.UPDATE) == {"edit.csv"}
    assert got.of(Activity.RENAME) == {"old.docx.locked", "moved"}  # one rename for the directory
    assert got.of(Activity.DELETE) == {"gone.txt", "rmdir"}  # one delete for the directory
    assert got.of(Activity.CREATE) == {"new.txt", "r\\xe9sum\\xe9.txt"}
    escaped = next(e for e in got.events if e.names_escaped)
    assert name_bytes(escaped.file_path, True) == raw
    assert n == 7 and all(e.reconciled for e in got.events)
    alarm = [e for e in got.events if e.alarm == ALARM_BLIND]
    assert len(alarm) == 1 and "blind on" in alarm[0].message and "found 7 changes" in alarm[0].message
    # the new snapshot is the baseline now: nothing more to report
    got.events.clear()
    assert rec.reconcile(os.fsencode(str(root))) == 0


def test_first_start_only_takes_a_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    _tree(root)
    got = Got()
    rec = Reconciler([str(root)], tmp_path / "state", "fs1", got, agent_user="dataward")
    assert rec.reconcile(os.fsencode(str(root))) == 0 and got.events == []


def test_after_an_overflow_only_changes_since_going_blind_are_creates_or_updates() -> None:
    s = 1_000_000_000  # one second in ns
    since = 1000 * s
    old = {b"/s/seen_live.txt": Entry(1, 900 * s, 900 * s, 1, 0, False),
           b"/s/edited.txt": Entry(1, 900 * s, 900 * s, 2, 0, False),
           b"/s/deleted.txt": Entry(1, 900 * s, 900 * s, 3, 0, False)}
    new = {b"/s/seen_live.txt": Entry(2, 950 * s, 950 * s, 1, 0, False),  # changed before going blind
           b"/s/edited.txt": Entry(2, 1001 * s, 1001 * s, 2, 0, False),
           b"/s/created_before.txt": Entry(1, 950 * s, 950 * s, 4, 0, False),
           b"/s/created_blind.txt": Entry(1, 990 * s, 1005 * s, 5, 0, False)}  # back-dated mtime, honest ctime
    found = {(a, p) for a, p, _, _ in diff(old, new, since)}
    assert found == {(Activity.UPDATE, b"/s/edited.txt"), (Activity.CREATE, b"/s/created_blind.txt"),
                     (Activity.DELETE, b"/s/deleted.txt")}


def test_excluded_paths_are_never_scanned(tmp_path: Path) -> None:
    root = tmp_path / "share"
    (root / ".dataward" / "spool").mkdir(parents=True)
    (root / ".dataward" / "spool" / "seg").write_text("x")
    (root / "a.txt").write_text("x")
    entries = scan(os.fsencode(str(root)), [os.fsencode(str(root / ".dataward"))])
    assert set(entries) == {os.fsencode(str(root / "a.txt"))}


def test_guard_rescans_after_overflow_off_the_capture_thread(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    got = Got()
    rec = Reconciler([str(root)], tmp_path / "state", "fs1", got, agent_user="dataward")
    guard = BlindGuard(rec)
    guard.start()
    assert guard.wait_idle(10)
    (root / "missed.txt").write_text("the kernel dropped this one")
    guard.overflow()
    assert guard.wait_idle(10)
    guard.stop()
    assert got.of(Activity.CREATE) == {"missed.txt"}
    assert next(e.message for e in got.events if e.alarm).count("inotify queue overflow") == 1
