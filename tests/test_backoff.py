"""The one retry delay: exponential, capped, jittered within the upper half, reset on success."""
from __future__ import annotations

import pytest

from dwcore.backoff import Backoff


def test_doubles_up_to_the_cap_at_the_top_of_the_jitter():
    b = Backoff(0.5, 4.0, rand=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_stays_in_the_upper_half_of_the_cap():
    b = Backoff(1.0, 8.0, rand=lambda: 0.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_random_draws_never_leave_the_range():
    b = Backoff(0.2, 30.0)
    for _ in range(200):
        cap = b.cap()
        assert cap / 2 <= b.next() <= cap
    assert b.cap() == 30.0  # many failures never overflow


def test_reset_after_success_starts_over():
    b = Backoff(1.0, 8.0, rand=lambda: 1.0)
    b.next(), b.next()
    assert b.failing
    b.reset()
    assert not b.failing and b.next() == 1.0


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)
