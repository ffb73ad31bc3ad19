"""`kill -9` of `dataward run` mid-burst loses no event the watcher had captured, and stores none twice.

A real `dataward run` subprocess watches a directory; the test writes a burst of 2,500 files and
kills the process with SIGKILL after the first 1,500, while the store's one-second batch is still
filling; the other 1,000 files are written while nothing watches. What the watcher had captured
is in the write-ahead log (``<data_dir>/wal``, read here with the spool's own reader after the
kill): on restart every one of those events is stored exactly once, by uid, whether it had
reached the store before the kill or not. Files written while dataward was down were never
captured: the start-up rescan reports them as reconciled events. Afterwards `dataward custody
verify` passes (every row sealed once, replayed ones included), and files with hostile names
(quotes, a backslash, a newline, SQL, invalid UTF-8) are stored verbatim. Real chDB, real inotify.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from dwcore.agents.spool import Spool
from dwcore.schemas.codec import decode_event
from dwcore.schemas.paths import name_text
from tests.procs import run_cli, wait_for

pytestmark = pytest.mark.e2e

FILES, KILL_AFTER = 2_500, 1_500
HOSTILE = [b"it's \"q\"", b"back\\slash", b"new\nline", b"x'; DROP TABLE events; --", b"bad-\xff-utf8"]


def _query(data_dir: Path, sql: str) -> list[dict]:
    res = run_cli("query", sql, "--data-dir", str(data_dir), "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _wal_bytes(wal: Path) -> int:
    return sum(p.stat().st_size for p in wal.glob("seg-*.log")) if wal.is_dir() else 0


def _write(path: Path, i: int) -> None:
    path.write_bytes(f"row {i}\n".encode() * 4)


def test_kill9_mid_burst_then_restart_stores_every_captured_event_exactly_once(tmp_path, dataward_proc):
    watched, data = tmp_path / "watched", tmp_path / "state"
    watched.mkdir()
    first = dataward_proc("run", "--watch", str(watched), "--data-dir", str(data))
    first.wait_ready(90)
    # The start-up snapshot of the (empty) tree is what the rescan after the restart compares with.
    wait_for(lambda: list((data / "state").glob("snapshot-*.msgpack")), 30, what="first snapshot")

    hostile = {name_text(os.fsencode(watched) + b"/" + name)[0] for name in HOSTILE}
    for name in HOSTILE:
        with open(os.fsencode(watched) + b"/" + name, "wb") as fh:
            fh.write(b"hostile\n")
    wait_for(lambda: hostile <= {r["file_path"] for r in _query(data, "SELECT file_path FROM events")}, 60,
             interval=0.5, what="the hostile names stored")

    paths = [watched / f"burst-{i:05d}.dat" for i in range(FILES)]
    for i, path in enumerate(paths[:KILL_AFTER]):
        _write(path, i)
    # The watcher has handed on (and logged) part of the burst; the store's batch is still open.
    wait_for(lambda: _wal_bytes(data / "wal") > 0, 30, interval=0.01, what="events in the write-ahead log")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(30)
    for i, path in enumerate(paths[KILL_AFTER:], KILL_AFTER):
        _write(path, i)  # written while nothing watches

    # What the killed process had captured and not yet acknowledged as stored.
    spool = Spool(data / "wal")
    logged = [decode_event(value) for _, _, value in spool.iter_unacked()]
    spool.close()
    assert logged, "the kill came after everything was stored: nothing was in flight"
    pending_uids = {e.uid for e in logged}

    second = dataward_proc("run", "--watch", str(watched), "--data-dir", str(data), "--log-level", "info")
    second.wait_ready(90)
    every = {str(p) for p in paths}

    def stored_creates() -> list[dict]:
        return _query(data, "SELECT file_path, reconciled, count() AS n FROM events WHERE activity_name = 'Create' "
                            "AND file_path LIKE '%/burst-%' GROUP BY file_path, reconciled")

    wait_for(lambda: {r["file_path"] for r in stored_creates()} >= every, 90, interval=0.5,
             what="every burst file stored (live or reconciled)")
    wait_for(lambda: pending_uids <= {r["uid"] for r in _query(data, "SELECT uid FROM events")}, 60, interval=0.5,
             what="the logged events replayed")
    assert second.stop() == 0

    # With nothing running, `dataward query` opens the store itself: the final word.
    by_uid = {r["uid"]: r["n"] for r in _query(data, "SELECT uid, count() AS n FROM events GROUP BY uid")}
    assert all(by_uid.get(u) == 1 for u in pending_uids), {u: by_uid.get(u) for u in pending_uids if by_uid.get(u) != 1}
    assert max(by_uid.values()) == 1, "an event was stored twice"

    rows = stored_creates()
    live = {r["file_path"]: r["n"] for r in rows if not r["reconciled"]}
    reconciled = {r["file_path"]: r["n"] for r in rows if r["reconciled"]}
    assert max(live.values()) == 1, "a file's captured Create was stored twice"
    before = {str(p) for p in paths[:KILL_AFTER]}
    after = every - before
    assert set(live) <= before, "a live event for a file written while dataward was down"
    assert {e.file_path for e in logged if e.activity_id == 1} <= set(live)
    # The rescan at start reports everything created since its last snapshot, once per file.
    assert set(reconciled) == every and max(reconciled.values()) == 1
    assert not (after & set(live))
    log = second.log_path.read_text()
    assert "wal_replay" in log
    # Verbatim, one live Create each (the rescan after the restart reports them too, as reconciled).
    by_path = {r["file_path"]: r["n"] for r in _query(
        data, "SELECT file_path, count() AS n FROM events WHERE activity_name = 'Create' AND NOT reconciled "
              "GROUP BY file_path")}
    assert {p: by_path.get(p) for p in hostile} == dict.fromkeys(hostile, 1)
    custody = run_cli("custody", "verify", "--data-dir", str(data), "--format", "json")
    assert custody.returncode == 0, custody.stdout + custody.stderr
    (chain,) = json.loads(custody.stdout)
    assert (chain["stream"], chain["status"], chain["unsealed_rows"]) == ("embedded", "ok", 0)
    assert chain["rows"] == sum(by_uid.values())  # every stored event is inside the chain
    print(f"kill -9 after {KILL_AFTER} of {FILES} files: {len(live)} captured Creates stored once each, "
          f"{len(pending_uids)} events were in the log unacknowledged at the kill; "
          f"{len(after)} files written while down found by the rescan")
