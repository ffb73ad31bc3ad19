"""`dataward run` writes its events through the shared writer (sinks/stream_writer.py) at its
write-ahead log's numbers, against real chDB: a refused row is dead-lettered with the reason at its
position and the rest stored; parked events come back sealed once, even when the parked file is
replayed twice; hostile paths are stored verbatim; the custody chain verifies."""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time

import pytest

from dataward.config import AgentConfig, Config, StoreConfig
from dataward.embedded import EmbeddedPipeline
from dwcore.detectors.policy import load_policy
from dwcore.schemas.ddl import EVENTS_TABLE
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.custody import verify
from dwcore.sinks.errors import StoreUnavailable
from dwcore.sinks.parking import Keeper, ParkingLot
from dwcore.sinks.store import Store
from tests.procs import wait_for

NOW_MS = int(time.time() * 1000)  # inside every retention window
HOSTILE = ["/share/it's \"q\"", "/share/back\\slash", "/share/new\nline", "/share/x'; DROP TABLE events; --",
           "/share/bad-\udcff-utf8"]  # the last one holds a raw byte, as os.fsdecode hands it over


def ev(i: int, **kw):
    path = kw.pop("file_path", f"/share/{i}")
    return make_event(Activity.CREATE, uid=f"s{i:03d}", time=NOW_MS + i, user_name="alice", device="fs1",
                      file_path=path, **kw)


@pytest.fixture
def config(tmp_path):
    (tmp_path / "watched").mkdir()
    return Config(data_dir=str(tmp_path / "state"), agent=AgentConfig(device="fs1", tune_inotify=False),
                  store=StoreConfig(flush_interval_s=0.05, seal_interval_s=0.0))


def run(config, tmp_path) -> EmbeddedPipeline:
    pipeline = EmbeddedPipeline(config, load_policy(), [str(tmp_path / "watched")])
    pipeline.start()
    return pipeline


def rows(pipeline: EmbeddedPipeline, sql: str) -> list[list]:
    assert pipeline.store is not None
    return pipeline.store.reader.query(sql).rows


def chain(config) -> tuple[int, int]:
    """(rows sealed, rows not sealed) of this test's events once nothing runs; fails on any custody
    problem, and unless every row of the stream (the process's own alarm events too) is sealed."""
    store = Store.open(config.store_dsn, retention_days=3650)
    try:
        (result,) = verify(store.writer.rows)
        (total, mine), = store.reader.query("SELECT count(), countIf(uid LIKE 's%') FROM events").rows
    finally:
        store.close()
    assert result.first_problem is None, result.first_problem
    assert result.rows == total, f"{total - result.rows} rows outside the chain"
    return mine, result.unsealed_rows


def test_a_refused_row_is_dead_lettered_at_its_log_number_and_the_rest_stored(config, tmp_path):
    pipeline = run(config, tmp_path)
    try:
        batch = [ev(i) for i in range(12)]
        batch[5] = ev(5, file_size=-5)  # out of UInt64's range: the store refuses it for good
        pipeline.publish(batch)
        wait_for(lambda: pipeline._wal is not None and pipeline._wal.pending == 0, 30, what="the log acknowledged")
        (base,), = rows(pipeline, "SELECT min(_offset) FROM events WHERE uid LIKE 's%'")  # after any start-up alarm
        assert rows(pipeline, f"SELECT count(), countIf(_offset = {base + 5}), max(_offset) FROM events "
                              "WHERE uid LIKE 's%'") == [[11, 0, base + 11]]
        (source, reason, src, offset, raw), = rows(pipeline, "SELECT source, reason, _src, _offset, raw "
                                                             "FROM deadletter")
        assert (source, src, offset) == (f"embedded:{base + 5}", "embedded", base + 5)
        assert reason.startswith("store refused row:") and '"s005"' in raw
    finally:
        pipeline.stop()
    assert chain(config) == (11, 0)
    again = run(config, tmp_path)  # numbering goes on past the refused tail and every stored row
    try:
        again.publish([ev(20)])
        (offset,), = wait_for(lambda: rows(again, "SELECT _offset FROM events WHERE uid = 's020'"), 30, what="stored")
        assert offset > 11
    finally:
        again.stop()
    assert chain(config) == (12, 0)


def test_parked_events_replay_sealed_once_with_hostile_paths_verbatim(config, tmp_path):
    lot = ParkingLot(config.parked_dir)
    # What an earlier run (or any writer through the policy) could not store: parked on disk.
    parked_events = [ev(100 + i, file_path=p) for i, p in enumerate(HOSTILE[:4])]
    Keeper(None, lot, "embedded:fs1").failed(EVENTS_TABLE, parked_events, StoreUnavailable("down"))  # type: ignore[arg-type]
    (parked,) = lot.files()
    kept = tmp_path / "copy.jsonl"
    shutil.copy(parked, kept)

    pipeline = run(config, tmp_path)  # replays the parked file at once, before anything else
    try:
        assert lot.pending == 0
        pipeline.publish([ev(i) for i in range(3)] + [ev(3, file_path=HOSTILE[4])])
        wait_for(lambda: pipeline._wal is not None and pipeline._wal.pending == 0, 30, what="the log acknowledged")
        stored = rows(pipeline, "SELECT uid FROM events WHERE uid LIKE 's%' ORDER BY _offset")
        assert stored == [["s100"], ["s101"], ["s102"], ["s103"], ["s000"], ["s001"], ["s002"], ["s003"]]
        shutil.copy(kept, parked)  # a crash after the insert, before the file was removed
        assert pipeline._keeper is not None
        pipeline._keeper.replay_now()
        assert lot.pending == 0
        assert rows(pipeline, "SELECT count(), uniqExact(uid) FROM events WHERE uid LIKE 's%'") == [[8, 8]]
        paths = dict(rows(pipeline, "SELECT uid, file_path FROM events"))
        assert [paths[f"s{100 + i}"] for i in range(4)] == HOSTILE[:4]  # quotes, backslash, newline, SQL
        assert rows(pipeline, "SELECT file_path, names_escaped FROM events WHERE uid = 's003'") == [
            ["/share/bad-\\xff-utf8", 1]]  # the raw byte in its lossless escaped form
    finally:
        pipeline.stop()
    assert chain(config) == (8, 0)  # parked rows sealed like the others, once


def test_detection_works_while_the_log_is_fsynced_and_an_alert_waits_for_its_events_on_disk(
        config, tmp_path, monkeypatch, caplog):
    pipeline = run(config, tmp_path)
    assert pipeline._wal is not None
    wal = pipeline._wal
    seen: list[tuple[str, bool, float]] = []  # alert uid, its batch on disk when the alert went out, when
    pipeline.subscribe(lambda a: seen.append((a.uid, wal.durable(wal._logged), time.time())))
    fsynced: list[float] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # a slow disk: the record reaches it 0.5 s after the write
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.5)
        real_fsync(fd)
        fsynced.append(time.time())

    caplog.set_level(logging.INFO, logger="dataward.embedded")
    pipeline.publish([ev(0)])  # the log's segment exists (a new segment's directory entry is fsynced inline)
    try:
        monkeypatch.setattr(os, "fsync", slow_fsync)
        t0 = int(time.time() * 1000)
        published = time.time()
        pipeline.publish([make_event(Activity.RENAME, uid=f"r{i:03d}", time=t0 + i, user_name="mallory",
                                     device="fs1", file_path=f"/share/d/{i}.csv",
                                     file_new_path=f"/share/d/{i}.csv.locked") for i in range(300)])
        monkeypatch.setattr(os, "fsync", real_fsync)
        wait_for(lambda: seen, 30, what="the mass-rename alert")
    finally:
        pipeline.stop()
    timing = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("alert_timing"))
    fields = dict(kv.split("=", 1) for kv in timing.split()[1:])
    synced_ms = int(min(fsynced) * 1000)
    # Detection had the batch while the fsync was still running (publish returned only after it)...
    assert int(fields["taken_ms"]) < synced_ms and published * 1000 < synced_ms
    # ...and no alert existed before its events' records were on disk.
    assert all(durable for _, durable, _ in seen)
    assert int(fields["durable_ms"]) >= synced_ms and min(at for _, _, at in seen) * 1000 >= synced_ms
