"""The lean inotify backend: real kernel events in a tmp dir become AccessEvents, none lost."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dwcore.agents import inotify_lean as ino
from dwcore.agents.lean_watcher import LeanWatcher
from dwcore.agents.watcher import ALARM_QUEUE_OVERFLOW
from dwcore.schemas.event import Activity
from dwcore.schemas.paths import name_bytes
from tests.test_agents_watcher import Sink, wait_for


@pytest.fixture
def lean(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    (root / ".dataward").mkdir()
    sink = Sink()
    w = LeanWatcher([str(root)], "fs1", sink, exclude=[str(root / ".dataward")])
    w.start()
    yield root, sink, w
    w.stop()


def _names(sink: Sink, activity: Activity) -> list[str]:
    return [os.path.basename(e.file_new_path or e.file_path) for e in sink.events if e.activity_id == activity]


def test_create_write_rename_delete(lean):
    root, sink, _w = lean
    (root / "a.txt").write_text("hello")
    (root / "a.txt").rename(root / "a.txt.locked")
    with open(root / "a.txt.locked", "a") as f:
        f.write("more")
    (root / "a.txt.locked").unlink()
    (root / ".dataward" / "spool.log").write_text("the agent's own files never feed back")
    wait_for(lambda: _names(sink, Activity.DELETE), what="delete")
    assert _names(sink, Activity.CREATE) == ["a.txt"]
    ren = [e for e in sink.events if e.activity_id == Activity.RENAME]
    assert ren[0].file_path == str(root / "a.txt") and ren[0].file_new_path == str(root / "a.txt.locked")
    assert _names(sink, Activity.UPDATE) == ["a.txt.locked"]
    assert all(e.user_name and e.device == "fs1" and e.share == str(root) for e in sink.events)
    assert len({e.uid for e in sink.events}) == len(sink.events)
    assert not [e for e in sink.events if ".dataward" in e.file_path]


def test_files_in_a_new_directory_are_never_missed(lean):
    root, sink, _ = lean
    for i in range(50):  # created faster than a watch can be added after each mkdir
        d = root / f"d{i}" / "sub"
        d.mkdir(parents=True)
        (d / "x.bin").write_bytes(b"1")
    wait_for(lambda: _names(sink, Activity.CREATE).count("x.bin") >= 50, what="50 nested files")
    paths = [e.file_path for e in sink.events if e.activity_id == Activity.CREATE]
    assert len([p for p in paths if p.endswith("x.bin")]) == 50  # each once, whether seen live or by the scan


def test_a_new_directorys_files_are_reported_once_across_batch_boundaries(tmp_path):
    # A file created between a new directory's watch and its scan is seen twice (the scan and its
    # own IN_CREATE); with a batch every millisecond the two land in different batches.
    root = tmp_path / "share"
    root.mkdir()
    sink = Sink()
    w = LeanWatcher([str(root)], "fs1", sink, flush_interval_s=0.001)
    w.start()
    try:
        for i in range(200):
            d = root / f"d{i}"
            d.mkdir()
            for k in range(5):
                (d / f"f{k}.bin").write_bytes(b"1")
        wait_for(lambda: len(_names(sink, Activity.CREATE)) >= 1200, what="200 dirs and 1,000 files")
    finally:
        w.stop()
    created = [e.file_path for e in sink.events if e.activity_id == Activity.CREATE]
    assert len(created) == len(set(created)) == 1200


def test_renamed_directory_keeps_correct_paths(lean):
    root, sink, _ = lean
    (root / "proj").mkdir()
    wait_for(lambda: _names(sink, Activity.CREATE) == ["proj"], what="dir create")
    (root / "proj").rename(root / "proj2")
    (root / "proj2" / "in.txt").write_text("x")
    wait_for(lambda: "in.txt" in _names(sink, Activity.CREATE), what="file in renamed dir")
    ev = next(e for e in sink.events if e.file_path.endswith("in.txt"))
    assert ev.file_path == str(root / "proj2" / "in.txt")


def test_moves_across_the_watch_boundary(lean, tmp_path):
    root, sink, _ = lean
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "in.txt").write_text("x")
    (root / "out.txt").write_text("x")
    wait_for(lambda: "out.txt" in _names(sink, Activity.CREATE), what="create")
    (outside / "in.txt").rename(root / "in.txt")
    (root / "out.txt").rename(outside / "out.txt")
    wait_for(lambda: "out.txt" in _names(sink, Activity.DELETE), what="moved out")
    assert "in.txt" in _names(sink, Activity.CREATE)


def test_non_utf8_and_hostile_names(lean):
    root, sink, _ = lean
    raw = os.fsencode(str(root)) + b"/caf\xe9\x1b[31m.txt"
    with open(raw, "wb") as f:
        f.write(b"x")
    wait_for(lambda: sink.events, what="event")
    ev = sink.events[0]
    assert ev.names_escaped and name_bytes(ev.file_path, True) == raw


def test_burst_of_creates_loses_nothing(lean):
    root, sink, w = lean
    n = 5_000
    for i in range(n):
        with open(root / f"f{i:05d}", "wb"):
            pass
    wait_for(lambda: len(_names(sink, Activity.CREATE)) >= n, timeout=60, what="all creates")
    assert len(set(_names(sink, Activity.CREATE))) == n and w.counters["overflows"] == 0


def test_overflow_raises_the_alarm(lean):
    _root, sink, w = lean
    w._translate([(-1, ino.IN_Q_OVERFLOW, 0, b"")], [], {})
    wait_for(lambda: [e for e in sink.events if e.alarm == ALARM_QUEUE_OVERFLOW], what="alarm")
    assert w.counters["overflows"] == 1


def test_root_must_exist(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        LeanWatcher([str(tmp_path / "missing")], "fs1", Sink()).start()
