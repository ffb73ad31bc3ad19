"""The sliding-window helper and the state codec, on their own."""
from __future__ import annotations

import pytest

from dwcore.detectors import window
from dwcore.detectors.state import (
    Counter,
    Incident,
    Item,
    RuleHit,
    StateError,
    UserState,
    decode_state,
    encode_state,
)


def test_count_window_is_half_open() -> None:
    times = [0, 5_000, 9_999, 10_000]
    assert window.count_ending_at(times, 10_000, 10_000) == 3  # 0 has left (end - W, end]
    assert window.count_ending_at(times, 9_999, 10_000) == 3


def test_insert_keeps_order_for_late_times() -> None:
    times: list[int] = []
    for t in (30, 10, 20, 20, 40):
        window.insert(times, t)
    assert times == [10, 20, 20, 30, 40]


def test_max_count_containing_a_late_time_looks_forward() -> None:
    times = [0, 100, 200, 900, 12_000]
    assert window.max_count_containing(times, 12_000, 1_000) == (1, 12_000)
    # A late 50 sits in bursts ending at 100, 200 or 900; the fullest ends at 900 (all four).
    assert window.max_count_containing(times, 50, 1_000) == (4, 900)


def test_trim_drops_old_then_caps_newest() -> None:
    times = list(range(10))
    window.trim(times, 2, 100)
    assert times == [3, 4, 5, 6, 7, 8, 9]
    window.trim(times, 2, 3)
    assert times == [7, 8, 9]


def test_state_roundtrip() -> None:
    inc = Incident(uid="u", first_seen=1, last_seen=2, count=3, detected_at=2, target="high", quiet_ms=60_000,
                   paths=["/a"], exts={".locked": 3},
                   rules={"mass_rename": RuleHit(level="high", observed=3, threshold=3, window_s=10,
                                                 first_seen=1, last_seen=2)})
    c = Counter(max_time=2, times=[1, 2], pending=[Item(time=1, path="/a", new_ext="")])
    state = UserState(counters={"mass_rename": {"": c}}, incidents={"": inc})
    state.memory.created.add("/a", 1, 1000)
    assert decode_state(encode_state(state)) == state


@pytest.mark.parametrize("raw", [b"", b"\xc1garbage", b"\x92\x80\x63"])
def test_bad_state_bytes_raise_state_error(raw: bytes) -> None:
    with pytest.raises(StateError):
        decode_state(raw)
