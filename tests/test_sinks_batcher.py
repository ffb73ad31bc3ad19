"""Batcher triggers and retry semantics, with an injected clock (no sleeps)."""
from __future__ import annotations

import threading
import time

from dwcore.backoff import Backoff
from dwcore.sinks.batcher import Batcher
from dwcore.sinks.errors import StoreError, StoreUnavailable


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def make(sink, retry_initial_s=0.2, retry_max_s=30.0, **kw):
    clock = Clock()
    # rand=1.0: the top of the jitter range, so the delays are exact (1 s, 2 s, ...)
    backoff = Backoff(retry_initial_s, retry_max_s, rand=lambda: 1.0)
    b = Batcher(sink, now=clock, sleep=clock.sleep, backoff=backoff, **kw)
    return b, clock


def test_size_trigger_sends_full_batches_in_order():
    got: list[list[int]] = []
    b, _ = make(got.append, batch_rows=3, flush_interval_s=60)
    b.add_many(range(2))
    assert b.poll() == 0 and got == []
    b.add_many(range(2, 7))
    assert b.poll() == 6
    assert got == [[0, 1, 2], [3, 4, 5]]
    assert b.pending == 1


def test_time_trigger_counts_from_first_unflushed_item():
    got: list[list[str]] = []
    b, clock = make(got.append, batch_rows=100, flush_interval_s=1.0)
    b.add("a")
    clock.t += 0.6
    b.add("b")
    assert b.poll() == 0
    clock.t += 0.4  # 1.0 s after "a", only 0.4 s after "b"
    assert b.poll() == 2 and got == [["a", "b"]]
    assert b.poll() == 0  # nothing left, nothing sent twice


def test_retriable_failure_keeps_rows_and_backs_off():
    calls: list[list[int]] = []
    failures = [StoreUnavailable("down"), StoreUnavailable("down")]

    def sink(batch):
        calls.append(list(batch))
        if failures:
            raise failures.pop(0)

    b, clock = make(sink, batch_rows=2, flush_interval_s=60, retry_initial_s=1.0)
    b.add_many([1, 2, 3])
    assert b.poll() == 0 and b.pending == 3
    assert b.poll() == 0 and len(calls) == 1  # backing off: no second attempt yet
    clock.t += 1.0
    assert b.poll() == 0 and len(calls) == 2  # second failure, backoff doubles to 2 s
    clock.t += 1.0
    assert b.poll() == 0 and len(calls) == 2
    clock.t += 1.0
    assert b.poll() == 2
    assert calls[-1] == [1, 2] and b.pending == 1
    assert b.flush() and calls[-1] == [3] and b.counters["retries"] == 2


def test_flush_retries_until_done_and_close_reports_leftovers():
    attempts = []

    def sink(batch):
        attempts.append(len(batch))
        if len(attempts) < 3:
            raise StoreUnavailable("down")

    b, _ = make(sink, batch_rows=10, flush_interval_s=60, retry_initial_s=0.5)
    b.add_many(range(25))
    assert b.flush() is True
    assert b.pending == 0 and b.counters["flushed"] == 25

    def always_down(batch):
        raise StoreUnavailable("down")

    b2, _ = make(always_down, batch_rows=10, retry_initial_s=1.0, retry_max_s=2.0)
    b2.add_many(range(5))
    assert b2.close(timeout_s=10) is False
    assert b2.pending == 5  # never dropped


def test_permanent_failure_goes_to_handler_not_retried():
    bad: list[tuple[list[int], Exception]] = []

    def sink(batch):
        raise StoreError("type mismatch")

    b, _ = make(sink, batch_rows=2, on_permanent=lambda batch, exc: bad.append((batch, exc)))
    b.add_many([1, 2])
    assert b.poll() == 2
    assert bad[0][0] == [1, 2] and isinstance(bad[0][1], StoreError)
    assert b.pending == 0


def test_timer_thread_flushes_by_age_and_adds_are_thread_safe():
    got: list[int] = []
    lock = threading.Lock()

    def sink(batch):
        with lock:
            got.extend(batch)

    b = Batcher(sink, batch_rows=1000, flush_interval_s=0.05)
    b.start(tick_s=0.01)

    def produce(base):
        for i in range(500):
            b.add(base + i)

    threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(got) < 2000:
        time.sleep(0.01)
    assert b.close()
    assert sorted(got) == sorted(k * 1000 + i for k in range(4) for i in range(500))
