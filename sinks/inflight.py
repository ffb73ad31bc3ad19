"""Reads and queries in flight: cancel one by its tag, or all of them when the store or endpoint stops.

A chDB query holds the process's one embedded engine until it ends: while it runs, no other
directory can be opened in this process ("EmbeddedServer already initialized with path ..."). So
closing a store stops its reads instead of leaving them to run out their time limit.

A KILL finds a query only once the engine has registered it. A read is cancelled before that
(while its statement is checked or its session is set up) through a flag it checks before each
step; between its last check and the engine registering it, only a KILL sent again reaches it, so
callers repeat the KILL until the read is over.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from dwcore.sinks.errors import StoreError

QUERY_WAS_CANCELLED = 394  # the engine's own code, so a caller sees one kind whoever stopped it
KILL_INTERVAL_S = 0.2


class ReadCancelled(StoreError):
    def __init__(self, tag: str) -> None:
        super().__init__(f"Code: {QUERY_WAS_CANCELLED}. DB::Exception: Query was cancelled "
                         f"before it started ({tag}). (QUERY_WAS_CANCELLED)", code=QUERY_WAS_CANCELLED)


class InflightReads:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._cancelled: dict[str, bool] = {}  # tag -> cancelled
        self._closing = False

    @contextlib.contextmanager
    def track(self, tag: str) -> Iterator[None]:
        with self._cond:
            if self._closing:
                raise StoreError("store is closed")
            if tag in self._cancelled:
                # Tags are how a KILL finds a read: two reads under one tag would die together.
                raise StoreError(f"a read tagged {tag!r} is already running")
            self._cancelled[tag] = False
        try:
            yield
        finally:
            with self._cond:
                del self._cancelled[tag]
                self._cond.notify_all()

    def check(self, tag: str) -> None:
        """Raise ReadCancelled if the read has been cancelled (call before each step)."""
        with self._cond:
            if self._cancelled.get(tag):
                raise ReadCancelled(tag)

    def mark(self, tags: Sequence[str]) -> None:
        with self._cond:
            for tag in tags:
                if tag in self._cancelled:
                    self._cancelled[tag] = True

    def running(self) -> list[str]:
        with self._cond:
            return list(self._cancelled)

    def close(self, kill: Callable[[list[str]], None], timeout_s: float) -> list[str]:
        """Refuse new reads, cancel the running ones and wait for them to end; the tags of any
        still running after ``timeout_s`` are returned."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
        while True:
            tags = self.running()
            if not tags or time.monotonic() >= deadline:
                return tags
            self.mark(tags)
            kill(tags)
            with self._cond:
                self._cond.wait_for(lambda: not self._cancelled, timeout=KILL_INTERVAL_S)


class SubmittedQueries:
    """Queries handed to a thread pool (the query endpoint's), by tag, until they are over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, concurrent.futures.Future[bytes]] = {}

    def add(self, tag: str, future: concurrent.futures.Future[bytes]) -> None:
        with self._lock:
            self._futures[tag] = future
        future.add_done_callback(lambda _: self._forget(tag))

    def _forget(self, tag: str) -> None:
        with self._lock:
            self._futures.pop(tag, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._futures)

    def stop(self, cancel: Callable[[str], None], timeout_s: float) -> tuple[int, int]:
        """Cancel every query and wait for them to end: those not started never run, running ones
        are killed (again, until they are over). Returns (stopped, still running after timeout_s)."""
        with self._lock:
            futures = dict(self._futures)
        deadline = time.monotonic() + timeout_s
        pending = {tag: fut for tag, fut in futures.items() if not fut.cancel() and not fut.done()}
        while pending and time.monotonic() < deadline:
            for tag in pending:
                cancel(tag)
            concurrent.futures.wait(pending.values(), timeout=KILL_INTERVAL_S)
            pending = {tag: fut for tag, fut in pending.items() if not fut.done()}
        return len(futures) - len(pending), len(pending)
