"""Pacing for senders to rate-limited remotes: a token bucket, and a clock that tests can drive.

Time is injected (``Clock``) so a test can prove behaviour over a minute-long outage without a
minute of wall time. Retry delays are the shared ``dwcore.backoff.Backoff``.
"""
from __future__ import annotations

import threading
import time


class Clock:
    """Monotonic seconds and an interruptible sleep. Subclass for tests (see ManualClock)."""

    def now(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> bool:
        """Sleep up to ``seconds``; True if woken early by ``wake``."""
        if seconds <= 0:
            return bool(wake and wake.is_set())
        if wake is None:
            time.sleep(seconds)
            return False
        return wake.wait(seconds)


class ManualClock(Clock):
    """Virtual time: ``sleep`` advances it at once (after yielding the GIL), so code that backs off
    for minutes runs in milliseconds while every wait it asked for is recorded in ``sleeps``."""

    def __init__(self, start: float = 1000.0, wall_ms: int = 1_800_000_000_000) -> None:
        self._t = start
        self._wall0 = wall_ms - int(start * 1000)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        with self._lock:
            return self._t

    def wall_ms(self) -> int:
        return self._wall0 + int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> bool:
        if wake is not None and wake.wait(0.001):
            return True
        if seconds > 0:
            with self._lock:
                self.sleeps.append(seconds)
                self._t += seconds
        return bool(wake and wake.is_set())


class TokenBucket:
    """``rate_per_minute`` sends with bursts of up to ``burst``. Not thread-safe (one owner)."""

    def __init__(self, rate_per_minute: float, burst: int = 1, clock: Clock | None = None) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = max(1, burst)
        self.clock = clock or Clock()
        self.tokens = float(self.burst)
        self._last = self.clock.now()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def _refill(self) -> None:
        now = self.clock.now()
        self.tokens = min(float(self.burst), self.tokens + (now - self._last) * self.rate)
        self._last = now

    def available(self) -> int:
        """Whole sends allowed right now."""
        if self.unlimited:
            return 1 << 30
        self._refill()
        return int(self.tokens)

    def wait_s(self) -> float:
        """Seconds until one send is allowed."""
        if self.unlimited:
            return 0.0
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        if not self.unlimited:
            self._refill()
            self.tokens -= 1
