"""The embedded mode's in-process bus: what Kafka is in the distributed mode, minus the network.

Batches, not single events, cross it (per-item queue operations cost more than the work). It is
bounded, so a writer faster than detection slows down (backpressure) instead of growing memory
without limit; nothing is dropped.
"""
from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchBus(Generic[T]):
    def __init__(self, max_batches: int = 1_000) -> None:
        self._q: queue.Queue[Sequence[T]] = queue.Queue(maxsize=max_batches)
        self.published = 0

    def publish(self, items: Sequence[T]) -> None:
        if items:
            self._q.put(items)  # blocks when full: backpressure to the producer
            self.published += len(items)

    def take(self, max_items: int, within_s: float) -> list[T]:
        """Up to max_items, waiting at most within_s for the first batch; [] on timeout."""
        out: list[T] = []
        deadline = time.monotonic() + within_s
        while len(out) < max_items:
            remaining = deadline - time.monotonic() if not out else 0
            try:
                out.extend(self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait())
            except queue.Empty:
                break
        return out

    def drained(self) -> bool:
        return self._q.empty()
