"""FileWatcher: real inotify events in a tmp dir become AccessEvents, in batches."""
from __future__ import annotations

import logging
import os
import pwd
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from dwcore.agents import inotify_limits
from dwcore.agents.watcher import ALARM_QUEUE_OVERFLOW, FileWatcher
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source

ME = pwd.getpwuid(os.getuid()).pw_name


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[AccessEvent]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, batch: list[AccessEvent]) -> None:
        with self._lock:
            self.batches.append(list(batch))
            self.threads.add(threading.current_thread().name)

    @property
    def events(self) -> list[AccessEvent]:
        with self._lock:
            return [e for b in self.batches for e in b]

    def having(self, activity: Activity, path: str) -> list[AccessEvent]:
        return [e for e in self.events if e.activity_id == activity and e.file_path == path]


@pytest.fixture
def watched(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    sink = Sink()
    w = FileWatcher([str(root)], "host1", sink, clock=lambda: 1_700_000_000.5)
    w.start()
    yield root, sink, w
    w.stop()


def test_create_modify_rename_delete_become_events(watched):
    root, sink, _ = watched
    f = root / "report.csv"
    f.write_bytes(b"a,b\n")
    wait_for(lambda: sink.having(Activity.CREATE, str(f)), what="create")
    with open(f, "ab") as fh:
        fh.write(b"1,2\n")
    wait_for(lambda: sink.having(Activity.UPDATE, str(f)), what="update")
    g = root / "report.csv.locked"
    f.rename(g)
    wait_for(lambda: sink.having(Activity.RENAME, str(f)), what="rename")
    g.unlink()
    wait_for(lambda: sink.having(Activity.DELETE, str(g)), what="delete")

    create = sink.having(Activity.CREATE, str(f))[0]
    assert create.activity_name == "Create" and create.device == "host1" and create.share == str(root)
    assert create.source == Source.FILE and create.attribution == Attribution.OWNER
    # the owner of a file the test created: whoever runs the tests
    assert create.user_name == ME and create.user_uid == str(os.getuid())
    assert create.time == 1_700_000_000_500
    rename = sink.having(Activity.RENAME, str(f))[0]
    assert rename.file_new_path == str(g) and rename.file_size == 8
    delete = sink.having(Activity.DELETE, str(g))[0]
    assert delete.user_name == ME  # remembered from earlier events: the file is gone
    assert delete.file_size is None
    uids = [e.uid for e in sink.events]
    assert len(uids) == len(set(uids))


def test_owner_of_a_deleted_file_is_the_owner_it_had(watched):
    root, sink, _ = watched
    f = root / "alice.txt"
    f.write_text("x")
    os.chown(f, 4242, 4242)
    wait_for(lambda: sink.having(Activity.CREATE, str(f)), what="create")
    with open(f, "a") as fh:  # an event after chown, so the agent has seen the new owner
        fh.write("y")
    wait_for(lambda: any(e.user_uid == "4242" for e in sink.having(Activity.UPDATE, str(f))), what="update")
    f.unlink()
    wait_for(lambda: sink.having(Activity.DELETE, str(f)), what="delete")
    assert sink.having(Activity.DELETE, str(f))[0].user_uid == "4242"


def test_burst_is_emitted_in_batches_of_at_most_1000_from_one_thread(watched):
    root, sink, _ = watched
    n = 2500
    for i in range(n):
        (root / f"f{i:05d}").touch()
    wait_for(lambda: len([e for e in sink.events if e.activity_id == Activity.CREATE]) >= n,
             timeout=30, what=f"{n} creates")
    creates = {e.file_path for e in sink.events if e.activity_id == Activity.CREATE}
    assert creates == {str(root / f"f{i:05d}") for i in range(n)}
    assert max(len(b) for b in sink.batches) <= 1000
    assert len(sink.batches) < n / 10  # batched, not one call per event
    assert sink.threads == {"dw-watch-dispatch"}


def test_directory_rename_and_delete_are_one_event_each(watched):
    root, sink, _ = watched
    d = root / "project"
    (d / "sub").mkdir(parents=True)
    for i in range(20):
        (d / "sub" / f"{i}.txt").write_text("x")
    wait_for(lambda: len([e for e in sink.events if e.activity_id == Activity.CREATE]) >= 22, what="creates")
    d2 = root / "project2"
    d.rename(d2)
    wait_for(lambda: sink.having(Activity.RENAME, str(d)), what="dir rename")
    (d2 / "sub").rename(root / "moved-sub")
    wait_for(lambda: sink.having(Activity.RENAME, str(d2 / "sub")), what="subdir rename")
    d2.rmdir()
    wait_for(lambda: sink.having(Activity.DELETE, str(d2)), what="dir delete")
    renames = [e for e in sink.events if e.activity_id == Activity.RENAME]
    assert len(renames) == 2  # not one per file below the directory
    assert not [e for e in sink.events if e.activity_id == Activity.UPDATE and e.file_path == str(root)]


def test_excluded_paths_never_become_events(tmp_path):
    root = tmp_path / "share"
    spool = root / ".dataward" / "spool"
    spool.mkdir(parents=True)
    sink = Sink()
    w = FileWatcher([str(root)], "h", sink, exclude=[str(root / ".dataward")])
    w.start()
    try:
        (spool / "seg-1.log").write_bytes(b"x" * 10)
        (root / "marker").touch()
        wait_for(lambda: sink.having(Activity.CREATE, str(root / "marker")), what="marker")
    finally:
        w.stop()
    assert not [e for e in sink.events if ".dataward" in e.file_path]


def test_repeated_writes_to_one_file_coalesce_into_one_update_per_batch(tmp_path):
    sink = Sink()
    w = FileWatcher([str(tmp_path)], "h", sink, flush_interval_s=3600)  # never ticks during the test
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 100)
    from watchdog.events import FileModifiedEvent

    for _ in range(50):
        w._on_fs_event(FileModifiedEvent(str(f)), str(tmp_path))
    w._on_fs_event(FileModifiedEvent(str(tmp_path / "other")), str(tmp_path))
    assert [e.file_path for e in w._buffer] == [str(f), str(tmp_path / "other")]
    assert w.counters["coalesced"] == 49
    assert w._buffer[0].file_size == 100


def test_stop_hands_over_buffered_events(tmp_path):
    sink = Sink()
    w = FileWatcher([str(tmp_path)], "h", sink, flush_interval_s=3600)
    w.start()
    (tmp_path / "last").touch()
    wait_for(lambda: w.counters["seen"] >= 1, what="seen")
    w.stop()
    assert sink.having(Activity.CREATE, str(tmp_path / "last"))


def test_emit_failure_keeps_the_batch_and_retries(tmp_path):
    calls: list[int] = []
    got: list[AccessEvent] = []

    def flaky(batch: list[AccessEvent]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise ConnectionError("spool disk gone")
        got.extend(batch)

    w = FileWatcher([str(tmp_path)], "h", flaky)
    w.start()
    try:
        (tmp_path / "a").touch()
        wait_for(lambda: any(e.file_path == str(tmp_path / "a") for e in got), what="retry")
    finally:
        w.stop()
    assert w.counters["emit_errors"] == 1


def test_the_last_try_at_stop_is_counted(tmp_path):
    got: list[AccessEvent] = []
    calls: list[int] = []

    def fails_once(batch: list[AccessEvent]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise ConnectionError("spool disk gone")
        got.extend(batch)

    w = FileWatcher([str(tmp_path)], "h", fails_once, flush_interval_s=3600)  # only stop() flushes
    w.start()
    (tmp_path / "last").touch()
    wait_for(lambda: w.counters["seen"] >= 1, what="seen")
    w.stop()
    assert [e.file_path for e in got] == [str(tmp_path / "last")]
    assert (w.counters["emitted"], w.counters["emit_errors"], w.counters.get("lost", 0)) == (1, 1, 0)


def test_overflow_hook_emits_alarm_per_root_and_warns(tmp_path, caplog):
    roots = [tmp_path / "a", tmp_path / "b"]
    for r in roots:
        r.mkdir()
    sink = Sink()
    w = FileWatcher([str(r) for r in roots], "fs01", sink, clock=lambda: 1_700_000_000.0)
    w.start()
    try:
        with caplog.at_level(logging.WARNING, logger="dwcore.agents.watcher"):
            w.on_queue_overflow()
        wait_for(lambda: len([e for e in sink.events if e.alarm]) == 2, what="alarms")
    finally:
        w.stop()
    alarms = [e for e in sink.events if e.alarm]
    assert {a.file_path for a in alarms} == {str(r) for r in roots}
    a = alarms[0]
    assert a.alarm == ALARM_QUEUE_OVERFLOW and a.activity_id == Activity.OTHER and a.activity_name == "Other"
    assert a.attribution == Attribution.AGENT and a.source == Source.AGENT and a.user_name == "root"
    assert "lost" in a.message and "max_queued_events" in a.message
    assert w.counters["overflows"] == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(line.startswith("inotify_queue_overflow device=fs01 root=") for line in lines)


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(inotify_limits.QUEUE_SYSCTL, os.W_OK),
                    reason="needs root to shrink fs.inotify.max_queued_events")
def test_real_kernel_queue_overflow_raises_the_alarm(tmp_path):
    sink = Sink()
    w = FileWatcher([str(tmp_path)], "h", sink)
    original = inotify_limits.read_limit(inotify_limits.QUEUE_SYSCTL)
    assert original is not None
    try:
        # Global setting, read at inotify_init: keep the small value only while our watcher starts.
        inotify_limits.write_limit(inotify_limits.QUEUE_SYSCTL, 16)
        w.start()
    finally:
        inotify_limits.write_limit(inotify_limits.QUEUE_SYSCTL, original)
    assert inotify_limits.read_limit(inotify_limits.QUEUE_SYSCTL) == original
    def burst() -> bool:
        # One external process creating files as fast as it can outruns a 16-event queue; repeat
        # in case the reader thread happened to keep up with one burst.
        names = [str(tmp_path / f"f{uuid.uuid4().hex}") for _ in range(3000)]
        subprocess.run(["touch", *names], check=True)
        return any(e.alarm == ALARM_QUEUE_OVERFLOW for e in sink.events)

    try:
        wait_for(burst, timeout=20, what="overflow alarm")
    finally:
        w.stop()
    assert w.counters["overflows"] >= 1


def test_queue_size_is_raised_never_lowered(tmp_path, caplog):
    f = tmp_path / "max_queued_events"
    f.write_text("16384\n")
    with caplog.at_level(logging.INFO, logger="dwcore.agents.inotify_limits"):
        assert inotify_limits.ensure_queue_size(1_048_576, path=f) == 1_048_576
    assert "inotify_queue_raised sysctl=fs.inotify.max_queued_events old=16384 new=1048576" in caplog.text
    f.write_text("2000000\n")
    assert inotify_limits.ensure_queue_size(1_048_576, path=f) == 2_000_000
    f.write_text("100\n")
    assert inotify_limits.ensure_queue_size(1_048_576, allow_raise=False, path=f) == 100
    assert f.read_text().strip() == "100"
