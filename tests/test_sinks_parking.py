"""One failure policy against real chDB: refused rows land in `deadletter` with the reason,
rows the store cannot take now are parked on disk and replayed, nothing lost, nothing doubled."""
from __future__ import annotations

import json
import shutil
import struct
import threading
import time
from pathlib import Path

import pytest

from dataward.config import AgentConfig, Config, StoreConfig
from dataward.embedded import EmbeddedPipeline
from dwcore.agents.spool import Spool
from dwcore.detectors.policy import load_policy
from dwcore.schemas.ddl import ALERTS_TABLE, EVENTS_TABLE
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.custody import verify
from dwcore.sinks.errors import StoreUnavailable
from dwcore.sinks.parking import Keeper, ParkingLot
from dwcore.sinks.store import Store
from tests.procs import wait_for
from tests.test_sinks_kafka import alert

NOW_MS = int(time.time() * 1000)  # inside every retention window


def ev(i: int, **kw):
    return make_event(Activity.CREATE, uid=f"e{i}", time=NOW_MS + i, user_name="alice", device="fs1",
                      file_path=f"/share/{i}", **kw)


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=3650)
    s.writer.ensure_schema()
    yield s
    s.close()


def count(store, table):
    return store.reader.query(f"SELECT count() FROM {table}").rows[0][0]


def test_refused_rows_go_to_deadletter_with_the_reason(store, tmp_path):
    keeper = Keeper(store.writer, ParkingLot(tmp_path / "parked"), "embedded:fs1")
    bad = ev(1, file_size=-5)  # out of UInt64's range: the store refuses it for good
    try:
        store.writer.insert_events([bad])
    except Exception as exc:  # the real refusal, handed to the policy
        keeper.failed(EVENTS_TABLE, [bad], exc)
    else:
        pytest.fail("the store took an out-of-range value")
    rows = store.reader.query("SELECT source, reason, raw FROM deadletter").rows
    assert len(rows) == 1
    source, reason, raw = rows[0]
    assert source == "embedded:fs1" and reason.startswith("store refused rows for events:") and "file_size" in reason
    kept = json.loads(raw)  # kept whole: an analyst sees exactly what was refused
    assert (kept["uid"], kept["file_size"], kept["file_path"]) == ("e1", -5, "/share/1")
    assert keeper.lot.pending == 0 and count(store, "events") == 0


def test_unavailable_rows_are_parked_and_replayed_once(store, tmp_path):
    lot = ParkingLot(tmp_path / "parked")
    keeper = Keeper(store.writer, lot, "embedded:fs1")
    keeper.failed(EVENTS_TABLE, [ev(i) for i in range(5)], StoreUnavailable("down"))
    keeper.failed(ALERTS_TABLE, [alert()], StoreUnavailable("down"))
    assert lot.pending == 2 and count(store, "events") == 0
    events_file = next(p for p in lot.files() if p.name.startswith("events-"))
    kept = tmp_path / "copy.jsonl"
    shutil.copy(events_file, kept)
    assert keeper.replay_now() == 6
    assert (count(store, "events"), count(store, "alerts"), lot.pending) == (5, 1, 0)
    # A crash after the insert but before the file was removed: the replay is dropped by its token.
    shutil.copy(kept, events_file)
    assert lot.pending == 1
    keeper.replay_now()
    assert count(store, "events") == 5 and lot.pending == 0


def test_replay_waits_while_the_store_is_still_down(store, tmp_path):
    lot = ParkingLot(tmp_path / "parked")
    lot.park(EVENTS_TABLE, [ev(1)])

    class Down:
        def insert(self, *a, **k):
            raise StoreUnavailable("still down")

    assert lot.replay(Down()) == 0 and lot.pending == 1  # kept for the next try
    assert lot.replay(store.writer) == 1 and lot.pending == 0


def test_unreadable_parked_line_becomes_a_dead_letter(store, tmp_path):
    lot = ParkingLot(tmp_path / "parked")
    path = lot.park(EVENTS_TABLE, [ev(1)])
    path.write_bytes(path.read_bytes() + b'{"uid": \n')
    assert lot.replay(store.writer) == 1
    (reason, source), = store.reader.query("SELECT reason, source FROM deadletter").rows
    assert reason.startswith("parked row unreadable: invalid event") and source == f"parked:{path.name}:2"


def test_embedded_keeps_what_the_store_did_not_take_in_its_log_and_stores_it_on_next_start(tmp_path):
    """`dataward run` parks no events: those the store did not take stay in the write-ahead log and
    come back at the next start at their own numbers, stored once and sealed once."""
    watched = tmp_path / "watched"
    watched.mkdir()
    config = Config(data_dir=str(tmp_path / "state"), agent=AgentConfig(device="fs1", tune_inotify=False),
                    store=StoreConfig(flush_interval_s=0.05, seal_interval_s=0.0))
    first = EmbeddedPipeline(config, load_policy(), [str(watched)])
    first.start()
    assert first._batcher is not None and first._wal is not None
    down = threading.Event()

    def store_down(batch):
        down.set()
        raise StoreUnavailable("store went away")

    first._batcher._sink = store_down  # the store stops answering for this run
    first.publish([ev(i) for i in range(20)])
    assert down.wait(10)
    first._batcher.close = lambda timeout_s=None: False  # do not wait out the retries in a test
    first.stop()
    assert ParkingLot(config.parked_dir).pending == 0
    spool = Spool(Path(config.data_dir) / "wal")  # what the log holds for them, read the way a restart does
    logged = sorted(struct.unpack(">Q", key)[0] for _, key, value in spool.iter_unacked() if b'"uid":"e' in value)
    spool.close()
    assert len(logged) == 20

    second = EmbeddedPipeline(config, load_policy(), [str(watched)])
    second.start()  # replays the log at once
    try:
        assert second._store is not None
        query = second._store.reader.query
        wait_for(lambda: query("SELECT count() FROM events WHERE uid LIKE 'e%'").rows == [[20]], 30,
                 what="the logged events stored")
        assert query("SELECT groupArray(_offset) FROM (SELECT _offset FROM events WHERE uid LIKE 'e%' "
                     "ORDER BY _offset)").rows == [[logged]]  # the numbers they were logged with
        wait_for(lambda: second._wal is not None and second._wal.pending == 0, 30, what="the log acknowledged")
    finally:
        second.stop()
    store = Store.open(config.store_dsn, retention_days=3650)
    try:
        (result,) = verify(store.writer.rows)
        (total,), = store.reader.query("SELECT count() FROM events").rows  # the process's own alarms too
        assert result.first_problem is None and result.unsealed_rows == 0 and result.rows == total >= 20
    finally:
        store.close()
