"""One writer of a stream's rows for both modes, against real chDB: positions and dedup tokens on
every insert, refused rows isolated into dead letters with the reason, retries that store nothing
twice, and parked events replayed into the custody chain like any other row."""
from __future__ import annotations

import shutil
import time

import pytest

from dwcore.schemas.ddl import EVENTS_TABLE
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.custody import Sealer, verify
from dwcore.sinks.errors import StoreUnavailable
from dwcore.sinks.parking import Keeper, ParkingLot
from dwcore.sinks.store import Store
from dwcore.sinks.stream_writer import EmbeddedStream, dedup_token

NOW_MS = int(time.time() * 1000)  # inside every retention window


def ev(i: int, **kw):
    return make_event(Activity.CREATE, uid=f"e{i}", time=NOW_MS + i, user_name="alice", device="fs1",
                      file_path=f"/share/it's \"{i}\"\\n'; DROP TABLE events; --", **kw)


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=3650)
    s.writer.ensure_schema()
    yield s
    s.close()


def rows(store, sql):
    return store.reader.query(sql).rows


def chain_ok(store) -> tuple[int, int]:
    (result,) = verify(store.writer.rows)
    assert result.first_problem is None, result.first_problem
    return result.rows, result.unsealed_rows


def test_refused_row_is_dead_lettered_the_rest_stored_with_positions_and_sealed(store):
    sealer = Sealer(store.writer, 0)
    stream = EmbeddedStream(store.writer, sealer)
    batch = [ev(i) for i in range(50)]
    batch[17] = ev(17, file_size=-5)  # out of UInt64's range: refused for good
    assert stream(batch) == 49
    assert rows(store, "SELECT count(), uniqExact(_offset), min(_offset), max(_offset), "
                       "countIf(_offset = 17), any(_src) FROM events") == [[49, 49, 0, 49, 0, "embedded"]]
    (source, reason, raw), = rows(store, "SELECT source, reason, raw FROM deadletter")
    assert source == "embedded:17" and reason.startswith("store refused row:") and '"e17"' in raw
    sealer.tick(force=True)
    assert chain_ok(store) == (49, 0)


class FlakyWriter:
    """The real writer, except that one chosen insert call fails as if the store went away."""

    def __init__(self, writer, fail_call: int):
        self.writer, self.fail_call, self.calls = writer, fail_call, 0

    def rows(self, *a):
        return self.writer.rows(*a)

    def insert_deadletters(self, *a, **k):
        return self.writer.insert_deadletters(*a, **k)

    def insert_events(self, *a, **k):
        self.calls += 1
        if self.calls == self.fail_call:
            raise StoreUnavailable("store went away mid-batch")
        return self.writer.insert_events(*a, **k)


def test_retry_after_an_outage_part_way_through_isolation_stores_each_row_once(store):
    flaky = FlakyWriter(store.writer, fail_call=3)  # 1: whole batch refused, 2: first half stored, 3: down
    stream = EmbeddedStream(flaky)
    batch = [ev(i) for i in range(40)]
    batch[30] = ev(30, file_size=-1)
    with pytest.raises(StoreUnavailable):
        stream(batch)
    assert rows(store, "SELECT count() FROM events") == [[20]] and stream.next == 0  # nothing advanced
    assert stream(batch) == 39  # the batcher's retry: same offsets, same tokens
    assert rows(store, "SELECT count(), uniqExact(uid), uniqExact(_offset) FROM events") == [[39, 39, 39]]
    assert rows(store, "SELECT source FROM deadletter") == [["embedded:30"]]


def test_parked_events_are_replayed_into_the_custody_chain_once(store, tmp_path):
    sealer = Sealer(store.writer, 0)
    stream = EmbeddedStream(store.writer, sealer)
    lot = ParkingLot(tmp_path / "parked")
    keeper = Keeper(store.writer, lot, "embedded:fs1", events=stream)
    assert stream([ev(i) for i in range(10)]) == 10
    keeper.failed(EVENTS_TABLE, [ev(i) for i in range(10, 15)], StoreUnavailable("down"))
    (parked,) = lot.files()
    kept = tmp_path / "copy.jsonl"
    shutil.copy(parked, kept)
    assert keeper.replay_now() == 5
    sealer.tick(force=True)
    assert chain_ok(store) == (15, 0)  # parked rows sealed like the others
    assert rows(store, "SELECT min(_offset), max(_offset) FROM events WHERE uid IN ('e10', 'e14')") == [[10, 14]]
    shutil.copy(kept, parked)  # a crash after the insert, before the file was removed
    keeper.replay_now()
    assert rows(store, "SELECT count(), uniqExact(uid) FROM events") == [[15, 15]] and lot.pending == 0
    stream([ev(i) for i in range(15, 18)])
    sealer.tick(force=True)
    assert chain_ok(store) == (18, 0)
    # quotes, backslashes, newlines and SQL in a path come back verbatim through the parked path
    assert rows(store, "SELECT file_path FROM events WHERE uid = 'e12'") == [[ev(12).file_path]]


def test_a_new_stream_starts_past_a_sealed_refused_tail(store):
    sealer = Sealer(store.writer, 0)
    first = EmbeddedStream(store.writer, sealer)
    assert first([ev(0), ev(1), ev(2, file_size=-1)]) == 2  # offset 2 refused, but sealed over
    sealer.tick(force=True)
    second = EmbeddedStream(store.writer, sealer)
    assert second.next == 3
    second([ev(3)])
    sealer.tick(force=True)
    assert chain_ok(store) == (3, 0)


def test_dedup_token_spans_runs_per_stream():
    srcs = ["t:0"] * 3 + ["t:10"] * 2 + ["t:2"]
    offsets = [5, 6, 8, 0, 1, 7]
    assert dedup_token("events", srcs, offsets) == "events:t:0:5-8/3,t:2:7-7,t:10:0-1"
    assert dedup_token("events", ["embedded"] * 2, [3, 4]) == "events:embedded:3-4"
    long = dedup_token("events", [f"t:{i}" for i in range(100)], list(range(100)))
    assert len(long) == len("events:") + 64
