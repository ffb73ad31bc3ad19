"""One retry delay for every part: exponential with full jitter, capped, reset on success.

Jitter keeps many agents or sinks that lost the same broker or store from retrying in lockstep.
The random source is injected so tests can pin the delays.
"""
from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``next()`` gives the delay before the next attempt; ``reset()`` after a success.

    Attempt n (from 0) waits a uniform draw in [floor, min(max_s, initial_s * 2**n)], where floor is
    half the cap: jitter spreads retries without ever retrying in a tight loop.
    """

    def __init__(
        self,
        initial_s: float = 0.2,
        max_s: float = 30.0,
        *,
        rand: Callable[[], float] = random.random,  # jitter, not cryptography
    ) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self._rand = rand
        self.attempts = 0

    def cap(self) -> float:
        """The upper bound of the next delay (no jitter)."""
        return min(self.max_s, self.initial_s * (2 ** min(self.attempts, 62)))

    def next(self) -> float:
        cap = self.cap()
        self.attempts += 1
        return cap / 2 + self._rand() * cap / 2

    def reset(self) -> None:
        self.attempts = 0

    @property
    def failing(self) -> bool:
        return self.attempts > 0
