"""Batcher: turn a trickle of items into ClickHouse-sized batches, without ever losing one.

A batch goes to the sink callback when ``batch_rows`` items are waiting or ``flush_interval_s``
has passed since the oldest unflushed item arrived. A retriable failure (``exc.retriable``) keeps
the batch at the head of the queue and backs off (``dwcore.backoff``); a permanent one hands the batch to
``on_permanent`` (e.g. dead-letter it). Time comes from the injected ``now`` so the triggers are
tested without sleeping. Thread-safe: producers call ``add`` while a timer thread calls ``poll``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from dwcore.backoff import Backoff
from dwcore.logfmt import kv
from dwcore.metrics import BATCH_ROWS, ROWS_STORED

T = TypeVar("T")
log = logging.getLogger(__name__)


def _is_retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False))


class Batcher(Generic[T]):
    def __init__(
        self,
        sink: Callable[[list[T]], object],
        *,
        batch_rows: int = 10_000,
        flush_interval_s: float = 1.0,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Backoff | None = None,
        is_retriable: Callable[[BaseException], bool] = _is_retriable,
        on_permanent: Callable[[list[T], BaseException], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self._sink = sink
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self._now = now
        self._sleep = sleep
        self._backoff = backoff or Backoff(0.2, 30.0)
        self._is_retriable = is_retriable
        self._on_permanent = on_permanent
        self.name = name
        self._items: deque[T] = deque()
        self._first_at: float | None = None  # arrival time of the oldest unflushed item
        self._lock = threading.Lock()  # guards _items/_first_at; never held across the sink call
        self._flush_lock = threading.Lock()  # one sink call at a time, in arrival order
        self._retry_at: float | None = None
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()
        self.counters = {"added": 0, "flushed": 0, "batches": 0, "retries": 0, "permanent_errors": 0}

    # -- producers ------------------------------------------------------------------------

    def add(self, item: T) -> None:
        with self._lock:
            if not self._items:
                self._first_at = self._now()
            self._items.append(item)
            self.counters["added"] += 1

    def add_many(self, items: Iterable[T]) -> None:
        with self._lock:
            before = len(self._items)
            self._items.extend(items)
            added = len(self._items) - before
            if added and before == 0:
                self._first_at = self._now()
            self.counters["added"] += added

    def take_pending(self) -> list[T]:
        """Remove and return everything not yet sent (e.g. to park it when the store stays down)."""
        with self._flush_lock, self._lock:
            items = list(self._items)
            self._items.clear()
            self._first_at = None
            return items

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._items)

    # -- flushing -------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a flush is wanted now (size or age trigger) and no backoff is running."""
        now = self._now()
        with self._lock:
            if not self._items:
                return False
            if self._retry_at is not None and now < self._retry_at:
                return False
            if len(self._items) >= self.batch_rows:
                return True
            return self._first_at is not None and now - self._first_at >= self.flush_interval_s

    def poll(self) -> int:
        """Flush if due; one attempt per batch, a failure waits out its backoff. Returns rows sent."""
        sent = 0
        while self.due():
            done = self._send_one(whole=False)
            if done <= 0:
                break
            sent += done
        return sent

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send everything now, retrying retriable failures with backoff until ``timeout_s``.

        Returns True when nothing is left pending."""
        deadline = None if timeout_s is None else self._now() + timeout_s
        while self.pending:
            if self._retry_at is not None:
                wait = self._retry_at - self._now()
                if deadline is not None and self._now() + max(wait, 0.0) > deadline:
                    return False
                if wait > 0:
                    self._sleep(wait)
            self._send_one(whole=True)
        return True

    def _take(self, whole: bool) -> list[T]:
        with self._lock:
            if not self._items:
                return []
            if not whole and len(self._items) < self.batch_rows:
                # Age trigger: send what is there.
                n = len(self._items)
            else:
                n = min(len(self._items), self.batch_rows)
            return [self._items[i] for i in range(n)]

    def _drop_head(self, n: int) -> None:
        with self._lock:
            for _ in range(n):
                self._items.popleft()
            # The rest arrived later; restart the age clock from now rather than track every stamp.
            self._first_at = self._now() if self._items else None

    def _send_one(self, whole: bool) -> int:
        """One sink call with the head batch. >0 rows sent, 0 nothing to do, -1 failed."""
        with self._flush_lock:
            batch = self._take(whole)
            if not batch:
                return 0
            try:
                self._sink(batch)
            except Exception as exc:  # the kind decides what happens next
                if self._is_retriable(exc):
                    delay = self._backoff.next()
                    self._retry_at = self._now() + delay
                    self.counters["retries"] += 1
                    log.warning("flush_retry %s",
                                kv(batcher=self.name, rows=len(batch), backoff_s=f"{delay:.2f}", error=exc))
                    return -1
                self.counters["permanent_errors"] += 1
                self._drop_head(len(batch))
                self._retry_at = None
                self._backoff.reset()
                if self._on_permanent is not None:
                    self._on_permanent(batch, exc)
                else:
                    log.error("flush_failed_permanent %s", kv(batcher=self.name, rows_dropped=len(batch), error=exc))
                return len(batch)
            self._drop_head(len(batch))
            self._retry_at = None
            self._backoff.reset()
            self.counters["flushed"] += len(batch)
            self.counters["batches"] += 1
            ROWS_STORED.labels(self.name).inc(len(batch))
            BATCH_ROWS.labels("store").observe(len(batch))
            return len(batch)

    # -- timer thread ---------------------------------------------------------------------

    def start(self, tick_s: float = 0.05) -> None:
        """Poll from a daemon thread every ``tick_s`` so the age trigger fires without producers."""
        if self._timer is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(tick_s):
                try:
                    self.poll()
                except Exception:  # keep the timer alive; on_permanent may raise
                    log.exception("poll_failed %s", kv(batcher=self.name))

        self._timer = threading.Thread(target=run, name=f"{self.name}-timer", daemon=True)
        self._timer.start()

    def close(self, timeout_s: float | None = 30.0) -> bool:
        """Stop the timer and flush everything. False if rows remain after ``timeout_s``."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        ok = self.flush(timeout_s)
        if not ok:
            log.error("close_incomplete %s", kv(batcher=self.name, rows_pending=self.pending))
        return ok
