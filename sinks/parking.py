"""One failure policy for what the store cannot take, in every mode.

- Refused for good (a permanent ``StoreError``: a value out of a column's range, a bad row): the
  rows become dead letters with the reason and go to the ``deadletter`` table, where an analyst
  finds them with ``dataward query``. The distributed sink does the same for its Kafka batches.
- Not right now (``StoreUnavailable``: the store is down, the directory busy): the rows are
  parked on disk, one JSON-lines file per batch written atomically, and replayed into their table
  when the store answers again (``Replayer``), in the order they were parked. A replay carries a
  dedup token named after its file, so a crash between the insert and the file's removal does
  not insert the rows twice. Given an events stream (``Keeper(..., events=...)``, e.g.
  ``sinks.stream_writer.EmbeddedStream``), parked events go back through it, so they get
  positions at the stream's end and are sealed in custody blocks like every other row.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from dwcore.logfmt import kv
from dwcore.schemas.codec import (
    DecodeError,
    decode_alert,
    decode_deadletter,
    decode_delivery,
    decode_event,
    encode,
    encode_many,
)
from dwcore.schemas.ddl import (
    ALERT_COLUMNS,
    ALERTS_TABLE,
    DEADLETTER_COLUMNS,
    DEADLETTER_TABLE,
    DELIVERIES_TABLE,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    EVENTS_TABLE,
)
from dwcore.schemas.deadletter import DeadLetter
from dwcore.sinks.errors import StoreError, StoreFailure, StoreUnavailable
from dwcore.sinks.store_writer import StoreWriter

log = logging.getLogger(__name__)

# table -> (decoder of a parked line, the table's columns)
_TABLES: dict[str, tuple[Callable[[bytes], Any], tuple[tuple[str, str], ...]]] = {
    EVENTS_TABLE: (decode_event, EVENT_COLUMNS),
    ALERTS_TABLE: (decode_alert, ALERT_COLUMNS),
    DEADLETTER_TABLE: (decode_deadletter, DEADLETTER_COLUMNS),
    DELIVERIES_TABLE: (decode_delivery, DELIVERY_COLUMNS),
}
_seq = itertools.count()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dead_letters(records: Sequence[msgspec.Struct], reason: str, source: str) -> list[DeadLetter]:
    """Rows the store refused, kept whole (their JSON) with the reason."""
    at = now_ms()
    return [DeadLetter(raw=raw, reason=reason, source=source, time=at) for raw in _raw_lines(records)]


def _raw_lines(records: Sequence[msgspec.Struct]) -> list[bytes]:
    """Each record as JSON; one that cannot be encoded (raw bytes in a text field) as its repr, so
    that it is kept, readable, instead of failing the whole batch."""
    try:
        return encode_many(records)
    except (UnicodeEncodeError, TypeError, ValueError):
        out = []
        for record in records:
            try:
                out.append(encode(record))
            except (UnicodeEncodeError, TypeError, ValueError):
                out.append(repr(record).encode("utf-8", "backslashreplace"))
        return out


class EventStream(Protocol):
    """What parked events are written through (``sinks.stream_writer.EmbeddedStream``)."""

    def __call__(self, events: Sequence[Any]) -> int: ...
    def replay(self, events: Sequence[Any], token: str) -> int: ...


# Inserts one refused batch may cost to find its bad rows by halving (2 x log2(rows) for one bad
# row); past that, what is left is dead-lettered whole.
ISOLATE_BUDGET = 64


class ParkingLot:
    """Batches the store could not take yet, on disk under ``directory`` until a replay."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def park(self, table: str, records: Sequence[msgspec.Struct]) -> Path:
        if table not in _TABLES:
            raise ValueError(f"unknown table {table!r}")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{table}-{time.time_ns():020d}-{next(_seq):06d}.jsonl"
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(b"".join(line + b"\n" for line in _raw_lines(records)))
            fh.flush()
            os.fsync(fh.fileno())
        path = self.directory / name
        tmp.replace(path)  # whole or not at all: a replay never reads half a batch
        log.warning("rows_parked %s", kv(table=table, rows=len(records), file=path))
        return path

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.jsonl") if p.name.split("-", 1)[0] in _TABLES)

    @property
    def pending(self) -> int:
        return len(self.files())

    def replay(self, writer: StoreWriter, events: EventStream | None = None) -> int:
        """Insert every parked batch, oldest first; stops at the first ``StoreUnavailable`` (the
        rest waits for the next call). Returns how many rows reached the store. ``events``: the
        stream that parked events are appended to (positions, custody), else a plain insert."""
        done = 0
        for path in self.files():
            try:
                done += self._replay_file(writer, path, events)
            except StoreUnavailable as exc:
                log.info("replay_deferred %s", kv(file=path.name, error=exc))
                break
            except StoreError as exc:
                # Dead letters the store refuses: nowhere further to put them. Set the file aside
                # (kept, not replayed again) and say so once.
                aside = path.with_name(path.name + ".refused")
                path.replace(aside)
                log.error("replay_refused %s", kv(file=aside, error=str(exc)[:300]))
        return done

    def _replay_file(self, writer: StoreWriter, path: Path, events: EventStream | None) -> int:
        table = path.name.split("-", 1)[0]
        decode, columns = _TABLES[table]
        good: list[Any] = []
        bad: list[DeadLetter] = []
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line:
                continue
            try:
                good.append(decode(line))
            except DecodeError as exc:
                bad.append(DeadLetter(raw=line, reason=f"parked row unreadable: {exc}",
                                      source=f"parked:{path.name}:{number}", time=now_ms()))
        token = f"parked:{path.name}"
        inserted = 0
        if good and table == EVENTS_TABLE and events is not None:
            inserted = events.replay(good, token)  # refused rows: dead letters, inside the stream
        elif good:
            try:
                inserted = writer.insert(table, columns, good, dedup_token=token)
            except StoreError as exc:
                if table == DEADLETTER_TABLE:
                    raise  # nowhere further to put them; keep the file and say so
                bad.extend(dead_letters(good, f"store refused rows: {exc}", f"parked:{path.name}"))
        if bad:
            writer.insert_deadletters(bad, dedup_token=f"{token}:bad")
        path.unlink()
        log.info("rows_replayed %s", kv(table=table, rows=inserted, deadlettered=len(bad), file=path.name))
        return inserted


class Keeper:
    """Applies the policy for one writer: ``refused`` and ``unavailable`` for a failed batch, and a
    background replay of what is parked (every ``interval_s``, and at once on ``start``)."""

    def __init__(self, writer: StoreWriter, lot: ParkingLot, source: str, interval_s: float = 2.0,
                 events: EventStream | None = None) -> None:
        self.writer = writer
        self.events = events  # the embedded stream: events keep positions and custody on every path
        self.lot = lot
        self.source = source
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one replay at a time
        self.counters = {"deadlettered": 0, "parked": 0, "replayed": 0, "isolated_ok": 0}

    def failed(self, table: str, records: Sequence[msgspec.Struct], exc: BaseException) -> None:
        """A batch for ``table`` failed with ``exc``: park it (retriable), or (permanent, and any
        error that is not a store's, such as a row that cannot be encoded) find the rows that fail
        and dead-letter only those: one bad row never costs the rest of its batch."""
        if not records:
            return
        retriable = isinstance(exc, StoreFailure) and exc.retriable
        if not retriable and table != DEADLETTER_TABLE:
            budget = [ISOLATE_BUDGET]
            self._isolate(table, list(records), exc, budget)
            return
        self._park(table, records)

    def _isolate(self, table: str, records: list[msgspec.Struct], exc: BaseException, budget: list[int]) -> None:
        if len(records) > 1 and budget[0] > 0:
            mid = len(records) // 2
            for part in (records[:mid], records[mid:]):
                budget[0] -= 1
                try:
                    if table == EVENTS_TABLE and self.events is not None:
                        self.events(part)  # positions, token, refused rows isolated there
                    else:
                        self.writer.insert(table, _TABLES[table][1], part)
                    self.counters["isolated_ok"] += len(part)
                except StoreFailure as again:
                    if again.retriable:
                        self._park(table, part)
                    else:
                        self._isolate(table, part, again, budget)
                except Exception as again:
                    self._isolate(table, part, again, budget)
            return
        letters = dead_letters(records, f"store refused rows for {table}: {exc}", self.source)
        log.error("rows_refused %s", kv(table=table, rows=len(records), error=str(exc)[:300]))
        try:
            self.writer.insert_deadletters(letters)
            self.counters["deadlettered"] += len(letters)
        except StoreFailure:
            self._park(DEADLETTER_TABLE, letters)

    def _park(self, table: str, records: Sequence[msgspec.Struct]) -> None:
        self.lot.park(table, records)
        self.counters["parked"] += len(records)

    def replay_now(self) -> int:
        with self._lock:
            done = self.lot.replay(self.writer, self.events)
        self.counters["replayed"] += done
        return done

    def start(self) -> Keeper:
        if self._thread is None:
            self.replay_now()
            self._thread = threading.Thread(target=self._run, name="parking-replay", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.lot.files():
                continue
            try:
                self.replay_now()
            except Exception:  # the replay must outlive one bad file; it is kept for the next try
                log.exception("replay_failed %s", kv(directory=self.lot.directory))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
