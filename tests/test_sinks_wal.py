"""The embedded mode's write-ahead log against a real chDB store: a crash anywhere between logging,
inserting and acknowledging neither loses nor duplicates an event on the next start."""
from __future__ import annotations

import pytest

from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.store import Store
from dwcore.sinks.wal import SRC, EventWal, WalStream, stored_max


def ev(i: int, path: str | None = None):
    return make_event(Activity.CREATE, uid=f"w{i:04d}", time=1700000000000 + i, user_name="alice", device="fs1",
                      share="/srv", file_path=path or f"/srv/f{i}.csv")


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=3650)
    s.writer.ensure_schema()
    yield s
    s.close()


def _no_bad(seq: int, raw: bytes, reason: str) -> None:
    raise AssertionError(f"record {seq} unreadable: {reason}")


def _uids(store: Store) -> list[str]:
    return [r[0] for r in store.reader.query("SELECT uid FROM events ORDER BY _offset").rows]


def test_died_between_insert_and_ack_replays_only_what_the_store_lacks(store, tmp_path):
    wal = EventWal(tmp_path / "wal", stored_max(store.writer.rows) + 1)
    first = wal.append([ev(i) for i in range(6)])
    second = wal.append([ev(i) for i in range(6, 10)])
    assert [s for s, _ in first + second] == list(range(10))
    # The first batch reached the store; the process died before acknowledging it.
    store.writer.insert_events([e for _, e in first], positions=([SRC] * 6, [s for s, _ in first]))
    wal.close()

    again = EventWal(tmp_path / "wal", stored_max(store.writer.rows) + 1)
    assert again.pending == 10
    replayed = [item for chunk in again.replay(store.writer.rows, _no_bad, chunk=3) for item in chunk]
    assert [s for s, _ in replayed] == [6, 7, 8, 9]
    assert again.counters["already_stored"] == 6 and again.pending == 4
    WalStream(store.writer, again)(replayed)
    assert again.pending == 0
    assert _uids(store) == [f"w{i:04d}" for i in range(10)]
    assert again.append([ev(10)])[0][0] == 10  # numbering goes on above everything seen
    again.close()


def test_acknowledged_records_are_gone_and_a_torn_tail_is_cut(store, tmp_path):
    wal = EventWal(tmp_path / "wal", 0)
    done = wal.append([ev(i) for i in range(3)])
    WalStream(store.writer, wal)(done)
    wal.append([ev(i) for i in range(3, 6)])
    wal.close()
    segment = sorted((tmp_path / "wal").glob("seg-*.log"))[-1]
    segment.write_bytes(segment.read_bytes()[:-7])  # killed in the middle of the last record

    again = EventWal(tmp_path / "wal", stored_max(store.writer.rows) + 1)
    replayed = [item for chunk in again.replay(store.writer.rows, _no_bad) for item in chunk]
    assert [e.uid for _, e in replayed] == ["w0003", "w0004"]
    again.close()


def test_a_raw_bytes_name_is_logged_and_replayed_in_its_escaped_form(store, tmp_path):
    wal = EventWal(tmp_path / "wal", 0)
    raw = ev(1).__class__(**{**{f: getattr(ev(1), f) for f in ev(1).__struct_fields__},
                             "file_path": "/srv/x.locked\udcff"})  # a source that skipped the text form
    logged = wal.append([ev(0), raw])
    wal.close()
    again = EventWal(tmp_path / "wal", 0)
    (chunk,) = list(again.replay(store.writer.rows, _no_bad))
    assert [e.file_path for _, e in chunk] == ["/srv/f0.csv", "/srv/x.locked\\xff"]
    assert chunk[1][1].names_escaped and logged[1][1].names_escaped
    WalStream(store.writer, again)(chunk)
    assert store.reader.query("SELECT count() FROM events WHERE names_escaped").rows == [[1]]
    again.close()


def test_a_record_the_schema_refuses_is_handed_over_as_a_dead_letter_not_dropped(store, tmp_path):
    wal = EventWal(tmp_path / "wal", 0)
    wal.append([ev(0), ev(1, path="/srv/" + "d/" * 2100)])  # a path over the schema's 4096 characters
    wal.close()
    refused: list[tuple[int, bytes, str]] = []
    again = EventWal(tmp_path / "wal", 0)
    replayed = [item for chunk in again.replay(store.writer.rows, lambda *bad: refused.append(bad)) for item in chunk]
    assert [e.uid for _, e in replayed] == ["w0000"]
    assert [(seq, b'"uid":"w0001"' in raw) for seq, raw, _ in refused] == [(1, True)]
    assert "file_path" in refused[0][2] and again.pending == 1  # the refused one is acknowledged
    again.close()


def test_a_batch_written_unsynced_is_durable_only_after_sync_and_a_waiter_syncs_it_itself(store, tmp_path):
    wal = EventWal(tmp_path / "wal", 0)
    logged = wal.append([ev(i) for i in range(5)], sync=False)
    top = logged[-1][0]
    assert not wal.durable(top) and wal.counters["syncs"] == 0
    assert wal.wait_durable(top)  # nobody else synced: the waiter does, once
    assert wal.durable(top) and wal.counters["syncs"] == 1
    wal.sync()
    assert wal.counters["syncs"] == 1  # nothing new written: no second fsync
    more = wal.append([ev(5)], sync=False)
    assert not wal.durable(more[0][0]) and wal.durable(top)
    wal.append([ev(6)])  # a synced append covers everything written before it
    assert wal.durable(more[0][0] + 1) and wal.counters["syncs"] == 1
    wal.close()
    again = EventWal(tmp_path / "wal", 0)
    assert again.pending == 7 and again.durable(6)  # what is read back from disk is on disk
    again.close()


def test_a_batch_the_writer_cannot_convert_and_an_unreadable_record_become_dead_letters_at_their_numbers(
        store, tmp_path):
    wal = EventWal(tmp_path / "wal", 0)
    stream = WalStream(store.writer, wal)
    logged = wal.append([ev(0), ev(1)])
    parked: list = []
    stream.refuse(logged, TypeError("cannot convert"), lambda letters, exc: parked.append(letters))
    stream.unreadable(7, b'{"uid":"w0007"', "file_path too long", lambda letters, exc: parked.append(letters))
    assert not parked and wal.pending == 0
    assert store.reader.query("SELECT source, _offset, reason FROM deadletter ORDER BY _offset").rows == [
        ["embedded:0", 0, "store refused row: cannot convert"], ["embedded:1", 1, "store refused row: cannot convert"],
        ["wal:7", 7, "write-ahead log record refused: file_path too long"]]
    wal.close()
