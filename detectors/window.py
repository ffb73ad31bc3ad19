"""Sliding-window counting over a short, sorted list of event times (epoch ms).

A window of ``window_ms`` ending at time ``e`` holds the times ``x`` with ``e - window_ms < x <= e``,
so "25 renames in 10 s" means 25 renames whose times span less than 10 s.

The lists stay short because callers cap them (see ``trim``): once a list holds the newest ``cap``
times, every count up to ``cap`` is still exact, and counts are only ever compared with thresholds
no larger than ``cap``.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right, insort


def insert(times: list[int], t: int) -> None:
    """Insert ``t`` keeping ``times`` sorted; late (out-of-order) times land in their place."""
    if not times or t >= times[-1]:
        times.append(t)
    else:
        insort(times, t)


def count_ending_at(times: list[int], end: int, window_ms: int) -> int:
    """How many times fall in the window ending at ``end``."""
    return bisect_right(times, end) - bisect_right(times, end - window_ms)


def max_count_containing(times: list[int], t: int, window_ms: int) -> tuple[int, int]:
    """The fullest window that contains ``t``: ``(count, end)``.

    For in-order arrival ``t`` is the newest time and the answer is the window ending at ``t``.
    A late event can complete a burst that ends after it, so then every window ending at a
    stored time in ``[t, t + window_ms)`` is tried (a maximal window can always end on an event).
    """
    if times and t >= times[-1]:
        return count_ending_at(times, t, window_ms), t
    best, best_end = 0, t
    lo = bisect_left(times, t)
    hi = bisect_left(times, t + window_ms)
    for end in times[lo:hi]:
        c = count_ending_at(times, end, window_ms)
        if c > best:
            best, best_end = c, end
    return best, best_end


def trim(times: list[int], keep_after: int, cap: int) -> None:
    """Drop times ``<= keep_after`` and then the oldest beyond ``cap``, in place."""
    cut = bisect_right(times, keep_after)
    if len(times) - cut > cap:
        cut = len(times) - cap
    if cut:
        del times[:cut]
