"""One rule's exact sliding window per counting key: event times -> the fullest window count.

"25 renames in 10 s" means 25 matching events whose times span less than 10 s. Times are kept
sorted (late events land in their place), two windows back so an event up to a window late still
meets its burst, and capped at ``rule.cap`` (counts are only compared up to it). Until the rule
fires, the newest ``threshold`` matches are kept as evidence (``pending``); the window that crosses
holds exactly those when events arrive in order.
"""
from __future__ import annotations

from bisect import bisect_right

from dwcore.detectors import window
from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.state import Counter, Item


def count(c: Counter, t: int, rule: RulePolicy) -> tuple[int, int]:
    """Add a match at ``t``; return the fullest window containing it as ``(count, end)``."""
    c.max_time = max(c.max_time, t)
    window.insert(c.times, t)
    window.trim(c.times, c.max_time - 2 * rule.window_ms, rule.cap)
    return window.max_count_containing(c.times, t, rule.window_ms)


def first_in_window(c: Counter, end: int, rule: RulePolicy) -> int:
    """Time of the oldest match in the window ending at ``end`` (from the times, not the evidence)."""
    i = bisect_right(c.times, end - rule.window_ms)
    return c.times[i] if i < len(c.times) else end


def keep_pending(c: Counter, item: Item, rule: RulePolicy) -> None:
    items = c.pending
    if not items or item.time >= items[-1].time:
        items.append(item)
    else:
        i = len(items)
        while i > 0 and items[i - 1].time > item.time:
            i -= 1
        items.insert(i, item)
    keep_after = c.max_time - 2 * rule.window_ms
    drop = 0
    while drop < len(items) and items[drop].time <= keep_after:
        drop += 1
    del items[: max(drop, len(items) - rule.threshold)]


def reset_after(c: Counter, last_seen: int, rule: RulePolicy) -> None:
    """A closed incident's events must not count toward the next one."""
    window.trim(c.times, last_seen, rule.cap)
    c.pending = []
