"""The embedded mode's write-ahead log: an event is on disk before anything acts on it.

``dataward run`` holds events in memory between the watcher and the store (the bus, detection,
the batcher's second of buffering); a ``kill -9`` used to lose all of them. Now each batch the
watcher hands on is appended to the agent's spool format (``agents.spool``: one write and one
fsync per batch, crc-checked records, a torn tail cut off on open) in ``<data_dir>/wal``, and
each event gets a sequence number that becomes its store position (``_src`` "embedded",
``_offset``), written in the same insert as the row. A record is acknowledged only after its
insert succeeded (or the row was dead-lettered, which is durable too); a segment whose
records are all acknowledged is deleted.

On the next start the records not acknowledged are replayed. Whether one was already stored
(the process died between the insert and the acknowledgement) is asked of the store itself, by
position, so no event is stored twice and none is skipped.

The rows go to the store through the shared writer (``sinks.stream_writer.EmbeddedStream``) at
these numbers: ``WalStream`` is the events batcher's sink.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dwcore.agents.spool import RecordId, Spool
from dwcore.logfmt import kv
from dwcore.schemas.codec import DecodeError, decode_event, encode_many, repair_event
from dwcore.schemas.ddl import EVENTS_TABLE
from dwcore.schemas.deadletter import DeadLetter, dead_letter
from dwcore.schemas.event import AccessEvent
from dwcore.sinks.replay import ReplayGuard
from dwcore.sinks.stream_writer import EmbeddedStream, event_raw

log = logging.getLogger(__name__)

SRC = "embedded"
_SEQ = struct.Struct(">Q")
Logged = tuple[int, AccessEvent]  # (sequence number = store offset, event)
Rows = Callable[[str, Mapping[str, Any]], list[list[Any]]]


def stored_max(rows: Rows, src: str = SRC) -> int:
    """The highest position of ``src`` in the store, -1 when it holds none."""
    found = rows(f"SELECT count(), max(_offset) FROM {EVENTS_TABLE} WHERE _src = {{s:String}}",  # noqa: S608
                 {"s": src})
    return int(found[0][1]) if found and int(found[0][0]) else -1


class EventWal:
    """Thread-safe: the watcher's thread appends, the store's thread acknowledges."""

    def __init__(self, directory: Path | str, floor: int, *, fsync: bool = True) -> None:
        """``floor``: the next sequence number the store has not used (``stored_max() + 1``)."""
        self._spool = Spool(directory, fsync=fsync)
        self._lock = threading.Lock()
        self._ids: dict[int, RecordId | None] = {}  # in flight; None: reserved, not logged
        top = floor - 1
        for rid, key, _ in self._spool.iter_unacked():
            seq = _SEQ.unpack(key)[0]
            self._ids[seq] = rid
            top = max(top, seq)
        self._next = top + 1
        self._logged = top  # the highest number written to the log
        self._synced = top  # every record up to this number is on disk (fsync'ed)
        self._sync_lock = threading.Lock()  # one fsync at a time; a waiter finds its record done
        self.counters = {"appended": 0, "acked": 0, "replayed": 0, "already_stored": 0, "unreadable": 0,
                         "syncs": 0}

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._ids)

    def append(self, events: Sequence[AccessEvent], *, sync: bool = True) -> list[Logged]:
        """Durably logs ``events`` (one write, one fsync) and returns them with their numbers.
        Raises (nothing is handed on) when the disk refuses: the watcher keeps and retries the batch.
        ``sync=False``: written, not yet fsync'ed; ``sync()`` or ``wait_durable()`` make it durable."""
        if not events:
            return []
        try:
            values = encode_many(events)
        except UnicodeEncodeError:  # raw bytes in a name: logged (and stored) in the lossless escaped form
            events = [repair_event(e) for e in events]
            values = encode_many(events)
        with self._lock:
            first = self._next
            seqs = range(first, first + len(events))
            ids = self._spool.append([(_SEQ.pack(s), v) for s, v in zip(seqs, values, strict=True)], sync=sync)
            self._next = first + len(events)
            self._logged = seqs[-1]
            if sync:  # this fsync covers the whole active segment; sealed ones were fsync'ed
                self._synced = self._logged
            self._ids.update(zip(seqs, ids, strict=True))
            self.counters["appended"] += len(events)
        return list(zip(seqs, events, strict=True))

    def sync(self) -> None:
        """Makes every record written so far durable: one fsync, outside the lock (appends and
        acknowledgements go on meanwhile). Raises OSError when the disk fails it."""
        with self._sync_lock:
            with self._lock:
                target = self._logged
                if self._synced >= target:
                    return
                fd = self._spool.dup_active()
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            with self._lock:
                self._synced = max(self._synced, target)
                self.counters["syncs"] += 1

    def durable(self, seq: int) -> bool:
        with self._lock:
            return self._synced >= seq

    def wait_durable(self, seq: int, timeout_s: float = 5.0) -> bool:
        """Until the record numbered ``seq`` is on disk (syncing it here if no one else is). False
        when the disk kept failing the fsync for ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while not self.durable(seq):
            try:
                self.sync()
            except OSError as exc:
                log.error("wal_sync_failed %s", kv(seq=seq, error=exc, action="retry"))
                if time.monotonic() + delay > deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        return True

    def reserve(self, n: int) -> list[int]:
        """``n`` numbers for rows that have a durable copy elsewhere (a parked file): in flight
        until acknowledged, never logged."""
        with self._lock:
            first = self._next
            self._next += n
            seqs = list(range(first, first + n))
            self._ids.update(dict.fromkeys(seqs))
        return seqs

    def done_upto(self) -> int:
        """Every number up to this one is acknowledged (stored, dead-lettered or never used)."""
        with self._lock:
            return (min(self._ids) if self._ids else self._next) - 1

    def ack(self, seqs: Iterable[int]) -> None:
        """These events are stored (or dead-lettered): their records may go."""
        with self._lock:
            ids = [rid for s in seqs if (rid := self._ids.pop(s, None)) is not None]
            if ids:
                self._spool.ack(ids)
                self.counters["acked"] += len(ids)

    def replay(self, rows: Rows, unreadable: Callable[[int, bytes, str], None],
               chunk: int = 1_000) -> Iterator[list[Logged]]:
        """The records a previous run logged but never acknowledged, in chunks, minus those the
        store already holds (acknowledged here and now); one the schema refuses goes to
        ``unreadable(seq, raw, reason)`` (a dead letter), never nowhere. Call once, before the first append."""
        with self._lock:
            pending = sorted(s for s, rid in self._ids.items() if rid is not None)
        if not pending:
            return
        guard = ReplayGuard(rows)
        guard.unsure([SRC])
        stored = guard.stored(SRC, pending[0])
        done = [s for s in pending if s in stored]
        self.counters["already_stored"] += len(done)
        self.ack(done)
        log.info("wal_replay %s", kv(pending=len(pending), already_stored=len(done),
                                     replaying=len(pending) - len(done)))
        out: list[Logged] = []
        with self._lock:
            records = list(self._spool.iter_unacked())
        for _, key, value in records:
            seq = _SEQ.unpack(key)[0]
            if seq in stored:
                continue
            try:
                out.append((seq, decode_event(value)))
            except DecodeError as exc:  # crc-checked: a value the schema refuses (a path over 4096 characters)
                self.counters["unreadable"] += 1
                log.error("wal_record_unreadable %s", kv(seq=seq, error=exc, action="dead_letter"))
                unreadable(seq, value, str(exc))
                self.ack([seq])
                continue
            if len(out) >= chunk:
                self.counters["replayed"] += len(out)
                yield out
                out = []
        if out:
            self.counters["replayed"] += len(out)
            yield out

    def close(self) -> None:
        with self._lock:
            self._spool.close()


class WalStream:
    """The events batcher's sink in ``dataward run``: the shared writer (``EmbeddedStream``) at
    the log's sequence numbers. Each insert carries its positions and the dedup token of its log
    range, refused rows become dead letters (with the reason and their position), and the records
    are acknowledged once stored or dead-lettered. The custody sealer is told how far the stream
    is complete: up to the oldest record still in flight, so a block never closes over a hole that
    a later insert would fill."""

    def __init__(self, writer: Any, wal: EventWal, sealer: Any | None = None, src: str = SRC,
                 stream: EmbeddedStream | None = None) -> None:
        self.writer = writer
        self.wal = wal
        self.sealer = sealer
        self.src = src
        self.stream = stream if stream is not None else EmbeddedStream(writer, None, src)

    def __call__(self, batch: Sequence[Logged]) -> int:
        seqs = [s for s, _ in batch]
        done = self.stream.store_at([e for _, e in batch], seqs)
        self.acknowledge(seqs)
        return done

    def acknowledge(self, seqs: Iterable[int]) -> None:
        self.wal.ack(seqs)
        if self.sealer is not None:
            upto = self.wal.done_upto()
            if upto >= 0:
                self.sealer.stored(self.src, upto)

    def refuse(self, batch: Sequence[Logged], exc: BaseException,
               park: Callable[[list[DeadLetter], BaseException], None]) -> None:
        """A batch that failed other than as a store's refusal (a row the writer cannot even
        convert): dead letters at the rows' positions (``park`` them if the store cannot take
        those either), then acknowledged."""
        at = int(time.time() * 1000)
        letters = [dead_letter(event_raw(e), f"store refused row: {exc}", f"{self.src}:{s}", at) for s, e in batch]
        log.error("events_refused %s", kv(rows=len(batch), error=exc, action="dead_letter"))
        self.dead_letters(letters, [s for s, _ in batch], park)
        self.acknowledge(s for s, _ in batch)

    def unreadable(self, seq: int, raw: bytes, reason: str,
                   park: Callable[[list[DeadLetter], BaseException], None]) -> None:
        """A logged record the schema refuses on replay: a dead letter at its number."""
        letter = dead_letter(raw, f"write-ahead log record refused: {reason}", f"wal:{seq}", int(time.time() * 1000))
        self.dead_letters([letter], [seq], park)

    def dead_letters(self, letters: list[DeadLetter], seqs: list[int],
                     park: Callable[[list[DeadLetter], BaseException], None]) -> None:
        """Dead letters with their positions: a replay of the log asks the store for them too."""
        try:
            self.writer.insert_deadletters(letters, positions=([self.src] * len(letters), seqs))
        except Exception as exc:
            park(letters, exc)

    @property
    def parked(self) -> ParkedEvents:
        return ParkedEvents(self)


class ParkedEvents:
    """Parked events (``sinks.parking.Keeper(..., events=...)``) back into the stream: they get
    fresh sequence numbers from the log (reserved, not logged: the parked file is their durable
    copy), are stored like any other row and sealed once. The file's name is the dedup token, so a
    crash between the insert and the file's removal does not store them twice."""

    def __init__(self, stream: WalStream) -> None:
        self.stream = stream

    def __call__(self, events: Sequence[AccessEvent]) -> int:
        return self._store(events, None)

    def replay(self, events: Sequence[AccessEvent], token: str) -> int:
        return self._store(events, token)

    def _store(self, events: Sequence[AccessEvent], token: str | None) -> int:
        seqs = self.stream.wal.reserve(len(events))
        try:
            done = self.stream.stream.store_at(events, seqs, token)
        finally:  # stored, or not at all (the file stays for the next replay): not in flight
            self.stream.acknowledge(seqs)
        return done
