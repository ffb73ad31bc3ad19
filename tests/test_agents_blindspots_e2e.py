"""Blind spots are said out loud, by a real `dataward run` and a real `dataward agent file`.

The watcher runs as ``nobody`` (setpriv; as root nothing is unreadable), so that a directory it
may not read is a real EACCES. Each blind spot must give a WARNING log line (key=value, the name
inert) and an alarm event, stored (embedded, chDB) or published (agent, the shared Kafka):
- a directory the agent cannot read, there at start (its name carries an escape sequence) and
  one made while it runs;
- a directory whose path is longer than PATH_MAX, built with relative mkdir (dir_fd): the alarm
  names its parent, the deepest directory that is watched;
- the watch root deleted (``root_deleted``) and made again (``root_recreated``); the recreated
  root is watched again: files created in it afterwards arrive as live events.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from dwcore.schemas.codec import DecodeError, decode_event
from tests.procs import DatawardProcess, run_cli, wait_for

NOBODY = 65534
HIDDEN_AT_START = "vault\x1b[2J"  # a clear-screen sequence in the name


def _prefix() -> list[str]:
    if os.geteuid() != 0:
        return []  # already unprivileged: EACCES is real as it is
    if shutil.which("setpriv") is None:
        pytest.skip("runs the watcher as nobody: needs setpriv when the tests run as root")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture
def base() -> Iterator[Path]:
    """A tree ``nobody`` can reach (pytest's own tmp dirs are root-only)."""
    top = Path(tempfile.mkdtemp(prefix="dwblind", dir="/tmp"))
    top.chmod(0o755)
    for sub in ("share", "data"):
        (top / sub).mkdir()
        if os.geteuid() == 0:
            os.chown(top / sub, NOBODY, NOBODY)
    (top / "share" / HIDDEN_AT_START).mkdir(mode=0o000)
    os.chmod(top / "share" / HIDDEN_AT_START, 0o000)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _deep_tree(top: Path) -> bytes:
    """Nested directories, made relative to the last one, until the absolute path is longer than
    the kernel's limit; returns that path (the first the agent cannot watch) with a file in it."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path, name = os.fsencode(top), "d" * 250
    try:
        while len(path) < 4096:
            os.mkdir(name, 0o755, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            path += b"/" + name.encode()
        f = os.open("unseen.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, b"hidden from inotify\n")
        os.close(f)
    finally:
        os.close(fd)
    return path


def _scenario(base: Path, proc: DatawardProcess, alarms: Callable[[], list[tuple[str, str]]],
              live_paths: Callable[[], set[str]]) -> None:
    share = base / "share"

    def alarm(kind: str, path: str, what: str) -> None:
        wait_for(lambda: (kind, path) in alarms(), 60, interval=0.3, what=what)

    alarm("dir_unreadable", str(share / HIDDEN_AT_START), "the unreadable directory found at start")
    (share / "hidden").mkdir(mode=0o000)
    os.chmod(share / "hidden", 0o000)
    alarm("dir_unreadable", str(share / "hidden"), "the unreadable directory made while running")
    deep = _deep_tree(share)
    # named by its parent, the deepest directory that is watched (an event path is <= 4096 characters)
    alarm("path_too_long", os.fsdecode(os.path.dirname(deep)), "the directory beyond PATH_MAX")

    shutil.rmtree(share)
    alarm("root_deleted", str(share), "the deleted root")
    share.mkdir()
    if os.geteuid() == 0:
        os.chown(share, NOBODY, NOBODY)
    alarm("root_recreated", str(share), "the recreated root watched again")
    fresh = {str(share / f"after-{i}.txt") for i in range(5)}
    for p in fresh:
        Path(p).write_text("written into the recreated root\n")
    wait_for(lambda: fresh <= live_paths(), 60, interval=0.3, what="live events from the recreated root")

    assert proc.stop() == 0
    log = proc.log_path.read_text()
    warnings = [line for line in log.splitlines() if "level=WARNING" in line and "blind_spot" in line]
    for kind in ("dir_unreadable", "path_too_long", "root_deleted", "root_recreated"):
        assert any(f"alarm={kind}" in line for line in warnings), kind
    assert "\x1b" not in log  # the name's escape sequence is shown escaped, never raw
    assert any("vault\\\\u001b[2J" in line for line in warnings)


@pytest.mark.e2e
def test_embedded_run_raises_blind_spot_alarms_and_rewatches_a_recreated_root(base):
    data, share = base / "data", base / "share"
    proc = DatawardProcess(["run", "--watch", str(share), "--data-dir", str(data), "--log-level", "info"],
                           base / "run.log", env={"HOME": str(base)}, prefix=_prefix())
    try:
        proc.wait_ready(90)

        def rows(sql: str) -> list[dict]:
            res = run_cli("query", sql, "--data-dir", str(data), "--format", "json")
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        def alarms() -> list[tuple[str, str]]:
            return [(r["alarm"], r["file_path"]) for r in rows("SELECT alarm, file_path FROM events WHERE alarm != ''")]

        def live_paths() -> set[str]:
            return {r["file_path"] for r in rows("SELECT file_path FROM events WHERE activity_name = 'Create' "
                                                 "AND NOT reconciled AND file_path LIKE '%/after-%'")}

        _scenario(base, proc, alarms, live_paths)
    finally:
        proc.stop()


class _Collector:
    """Every event on the topic, decoded, from a consumer thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.events: list = []
        self.refused = 0
        self._stop = threading.Event()
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g{uuid.uuid4().hex}",
                            "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self._c.subscribe([topic])
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._c.consume(num_messages=500, timeout=0.2):
                if msg.error() is not None:
                    continue
                try:
                    self.events.append(decode_event(msg.value()))
                except DecodeError:  # the Create of the too-long directory: the sink dead-letters it
                    self.refused += 1

    def close(self) -> None:
        self._stop.set()
        self._t.join(10)
        self._c.close()


@pytest.mark.kafka
def test_file_agent_raises_blind_spot_alarms_and_rewatches_a_recreated_root(base, kafka_bootstrap, kafka_topics,
                                                                             topic_prefix):
    collector = _Collector(kafka_bootstrap, kafka_topics.events)
    share = base / "share"
    proc = DatawardProcess(["agent", "file", "--watch", str(share), "--data-dir", str(base / "data"),
                            "--device", "fs-blind", "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix,
                            "--log-level", "info"],
                           base / "agent.log", env={"HOME": str(base)}, prefix=_prefix())
    try:
        proc.wait_ready(90)
        started = time.time()
        _scenario(base, proc,
                  lambda: [(e.alarm, e.file_path) for e in list(collector.events) if e.alarm],
                  lambda: {e.file_path for e in list(collector.events)
                           if e.activity_id == 1 and not e.reconciled and "/after-" in e.file_path})
        assert all(e.device == "fs-blind" and e.source == "agent" for e in collector.events if e.alarm)
        assert time.time() - started < 120
    finally:
        proc.stop()
        collector.close()
