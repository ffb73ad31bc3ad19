"""How a stream's rows reach the store, the same in both modes: positions, dedup tokens, refusals.

A stream is a Kafka partition (distributed sink) or the embedded process's own event stream. Every
row of a stream has a position (``_src``, ``_offset``); an insert carries the dedup token
``table:src:first-last`` of its rows, so a retry of the same rows is dropped by the engine. When
the store refuses a batch for good (a permanent ``StoreError``), the batch is halved until the
refused rows are found: the rest is stored, and each refused row is handed back with the store's
reason, for the dead-letter table. A retriable failure (``StoreUnavailable``) propagates: the
caller keeps the batch and retries it with the same positions, so the halves already stored carry
the same tokens again and are not stored twice.

``EmbeddedStream`` is the embedded mode's writer of events: ``dataward run`` stores through it at
its write-ahead log's sequence numbers (``store_at``, via ``sinks.wal.WalStream``); the distributed
sink (``sinks.kafka_sink``) uses ``dedup_token`` and ``insert_isolating`` for its Kafka batches.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from dwcore.logfmt import kv
from dwcore.schemas.codec import encode
from dwcore.schemas.ddl import CUSTODY_TABLE, DEADLETTER_TABLE, EVENTS_TABLE
from dwcore.schemas.deadletter import DeadLetter, dead_letter
from dwcore.schemas.event import AccessEvent
from dwcore.sinks.errors import StoreError

log = logging.getLogger(__name__)


def dedup_token(table: str, srcs: Sequence[str], offsets: Sequence[int]) -> str:
    """``table:topic:partition:first-last`` per stream in the insert; hashed when it would grow long.
    Rows of one stream come in runs (a batch is built stream by stream), so the spans are found
    run by run, in C, not row by row."""
    spans: dict[str, tuple[int, int, int]] = {}
    start = 0
    for src, run in itertools.groupby(srcs):
        n = len(list(run))
        part = offsets[start:start + n]
        start += n
        lo, hi, count = spans.get(src, (min(part), max(part), 0))
        spans[src] = (min(lo, min(part)), max(hi, max(part)), count + n)

    def order(item: tuple[str, tuple[int, int, int]]) -> tuple[str, int]:
        stream, _, partition = item[0].rpartition(":")
        return (stream, int(partition)) if partition.isdigit() else (item[0], -1)

    text = ",".join(f"{src}:{a}-{b}" + ("" if n == b - a + 1 else f"/{n}")
                    for src, (a, b, n) in sorted(spans.items(), key=order))
    if len(text) > 200:
        text = hashlib.sha256(text.encode()).hexdigest()
    return f"{table}:{text}"


def insert_isolating(insert: Callable[[int, int], object], n: int) -> list[tuple[int, StoreError]]:
    """``insert(lo, hi)`` stores rows lo..hi-1. Stores rows 0..n-1, halving a refused range until
    each refused row is alone; returns (row, the store's error) for each refused row. The halving
    is deterministic, so a retry after a ``StoreUnavailable`` part-way repeats the same ranges."""
    refused: list[tuple[int, StoreError]] = []

    def go(lo: int, hi: int) -> None:
        try:
            insert(lo, hi)
        except StoreError as exc:
            if hi - lo == 1:
                refused.append((lo, exc))
                return
            mid = (lo + hi) // 2
            go(lo, mid)
            go(mid, hi)

    if n:
        go(0, n)
    return refused


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def event_raw(event: AccessEvent) -> bytes:
    """An event as its JSON, or (raw bytes in a name) its readable repr: a dead letter's body."""
    try:
        return encode(event)
    except (UnicodeEncodeError, TypeError, ValueError):  # raw bytes in a name: keep it readable
        return repr(event).encode("utf-8", "backslashreplace")


class EmbeddedStream:
    """The embedded mode's events as one stream ("embedded") with positions of its own, written
    like a Kafka partition: a dedup token per insert, refused rows isolated into dead letters with
    the reason, and sealed in custody blocks. Use as the events batcher's sink; parked batches come
    back through ``replay``. Thread-safe (the batcher's timer and the parking replay both write)."""

    def __init__(self, writer: Any, sealer: Any | None = None, src: str = "embedded") -> None:
        self.writer = writer
        self.sealer = sealer
        self.src = src
        self._lock = threading.Lock()
        self.deadlettered = 0
        # Past every row stored and every offset sealed: a refused tail leaves no row, but its
        # offsets may already be inside a custody block, and a block's range is never reused.
        # Dead letters carry their position too: a refused tail is never numbered again.
        found = [writer.rows(f"SELECT count(), max({column}) FROM {table} WHERE {key} = {{s:String}}",  # noqa: S608
                             {"s": src})
                 for table, column, key in ((EVENTS_TABLE, "_offset", "_src"), (DEADLETTER_TABLE, "_offset", "_src"),
                                            (CUSTODY_TABLE, "last_offset", "stream"))]
        self.next = max([int(r[0][1]) + 1 for r in found if r and int(r[0][0])], default=0)

    def __call__(self, events: Sequence[AccessEvent]) -> int:
        return self.store(events)

    def replay(self, events: Sequence[AccessEvent], token: str) -> int:
        """Parked rows, appended at the stream's end. ``token`` names the parked file: a crash
        between this insert and the file's removal replays them at other offsets, and the token
        (not the offsets) is what makes the engine drop the second copy."""
        return self.store(events, token)

    def store(self, events: Sequence[AccessEvent], token: str | None = None) -> int:
        """Insert with positions; refused rows become dead letters. Returns rows stored. Raises
        StoreUnavailable with nothing advanced: the retry gets the same offsets and tokens."""
        with self._lock:
            return self._store(list(events), list(range(self.next, self.next + len(events))), token)

    def store_at(self, events: Sequence[AccessEvent], offsets: Sequence[int], token: str | None = None) -> int:
        """Like ``store`` at positions the caller chose (the embedded write-ahead log's sequence
        numbers, increasing): the dedup token names that range, so a retry of the same range is
        dropped by the engine. The caller tells the sealer how far the stream is complete."""
        if len(events) != len(offsets):
            raise ValueError("one offset per event")
        with self._lock:
            return self._store(list(events), list(offsets), token, seal=False)

    def _store(self, events: list[AccessEvent], offsets: list[int], token: str | None, seal: bool = True) -> int:
        n = len(events)
        if not n:
            return 0
        srcs = [self.src] * n

        def insert(lo: int, hi: int) -> None:
            part_token = (f"{token}:{lo}-{hi}" if (lo, hi) != (0, n) else token) if token else \
                dedup_token(EVENTS_TABLE, srcs[lo:hi], offsets[lo:hi])
            self.writer.insert_events(events[lo:hi], dedup_token=part_token,
                                      positions=(srcs[lo:hi], offsets[lo:hi]))

        refused = insert_isolating(insert, n)
        if refused:
            self._deadletter(events, offsets, refused, token)
        self.next = max(self.next, offsets[-1] + 1)
        if seal and self.sealer is not None:
            self.sealer.stored(self.src, self.next - 1)
        return n - len(refused)

    def _deadletter(self, events: list[AccessEvent], offsets: list[int],
                    refused: list[tuple[int, StoreError]], token: str | None) -> None:
        at = _now_ms()
        letters: list[DeadLetter] = []
        for i, exc in refused:
            source = f"{self.src}:{offsets[i]}"
            log.error("insert_refused %s", kv(table=EVENTS_TABLE, source=source, error=exc))
            letters.append(dead_letter(event_raw(events[i]), f"store refused row: {exc}", source, at))
        first, last = offsets[refused[0][0]], offsets[refused[-1][0]]
        # With their positions: a replay asks the store (events and dead letters) what it holds.
        self.writer.insert_deadletters(letters, dedup_token=f"deadletter:{token or self.src}:{first}-{last}",
                                       positions=([self.src] * len(letters), [offsets[i] for i, _ in refused]))
        self.deadlettered += len(letters)
