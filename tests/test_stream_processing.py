"""The batch core both modes share, without Kafka: decode, dead-letter, per-user state, alerts."""
from __future__ import annotations

import threading

from dwcore.detectors.policy import load_policy
from dwcore.schemas import Activity, encode
from dwcore.schemas.event import make_event
from dwcore.stream.bus import BatchBus
from dwcore.stream.processing import RawMessage, close_quiet, decode_batch, detect, detect_user, quiet_clock


def _renames(user: str, n: int, t0: int = 1_700_000_000_000):
    return [
        make_event(Activity.RENAME, uid=f"{user}-{i}", time=t0 + i * 10, user_name=user, device="fs1",
                   file_path=f"/d/{i}.csv", file_new_path=f"/d/{i}.txt")
        for i in range(n)
    ]


def test_bad_messages_become_dead_letters_and_good_ones_keep_their_origin():
    good = _renames("alice", 2)
    msgs = [
        RawMessage(b"alice", encode(good[0]), "dw.events:0:10"),
        RawMessage(b"x", b"{broken", "dw.events:0:11"),
        RawMessage(b"x", None, "dw.events:0:12"),
        RawMessage(b"alice", encode(good[1]), "dw.events:0:13"),
    ]
    out = decode_batch(msgs, now_ms=42)
    assert out.events == good
    assert out.origins == [0, 3]
    assert [d.source for d in out.deadletters] == ["dw.events:0:11", "dw.events:0:12"]
    assert out.deadletters[0].raw == b"{broken" and "invalid event" in out.deadletters[0].reason
    assert "tombstone" in out.deadletters[1].reason
    assert all(d.time == 42 for d in out.deadletters)


def test_state_carries_across_batches_and_users_stay_apart():
    policy = load_policy()
    state: dict[str, bytes] = {}
    events = _renames("alice", 30) + _renames("bob", 10)
    # 20 of alice's renames in one batch, 10 in the next: the threshold (25) is crossed only
    # because her state survived between batches; bob's 10 never alert.
    assert detect(state, events[:20], policy) == []
    alerts = detect(state, events[20:], policy)
    assert [(a.rule, a.user) for a in alerts] == [("mass_rename", "alice")]
    assert set(state) == {"alice", "bob"}


def test_replayed_offsets_are_not_counted_twice():
    # A worker died after writing alice's state but before committing offsets: the next worker
    # gets the same events again and must neither count them twice nor re-open the incident.
    policy = load_policy()
    events = _renames("alice", 30)
    state: dict[str, bytes] = {}
    first = detect_user(state, "alice", events[:20], policy, offsets=list(range(100, 120)))
    assert first == []
    replay = detect_user(state, "alice", events, policy, offsets=list(range(100, 130)))
    # 30 renames, not 50: the 20 already folded in are skipped.
    assert [(a.rule, a.file_count, a.version) for a in replay] == [("mass_rename", 30, 1)]
    assert detect_user(state, "alice", events, policy, offsets=list(range(100, 130))) == []


def test_quiet_incident_gets_a_closing_version():
    policy = load_policy()
    state: dict[str, bytes] = {}
    (opened,) = detect(state, _renames("alice", 30), policy)
    assert close_quiet(state, "alice", 1_700_000_000_000 + 1_000, policy) == ([], True)
    closed, still_open = close_quiet(state, "alice", 1_700_000_000_000 + 120_000, policy)
    assert [(a.uid, a.status, a.version, a.file_count) for a in closed] == [(opened.uid, "closed", 2, 30)]
    assert not still_open


def test_corrupt_state_entry_resets_that_user_only():
    policy = load_policy()
    state: dict[str, bytes] = {"alice": b"\x00garbage"}
    alerts = detect(state, _renames("alice", 30), policy)
    assert [a.user for a in alerts] == ["alice"]
    assert state["alice"] != b"\x00garbage"


def test_bus_passes_batches_in_order_and_applies_backpressure():
    bus: BatchBus[int] = BatchBus(max_batches=2)
    bus.publish([1, 2])
    bus.publish([3])
    blocked = threading.Event()

    def third():
        bus.publish([4])  # the bus is full: this waits for the consumer
        blocked.set()

    t = threading.Thread(target=third)
    t.start()
    assert not blocked.wait(0.2)
    assert bus.take(10, 0.1) == [1, 2, 3]
    t.join(2)
    assert blocked.is_set()
    assert bus.take(10, 0.1) == [4]
    assert bus.take(10, 0.05) == []


def test_oversized_bad_message_keeps_reason_size_and_a_bounded_prefix():
    from dwcore.schemas.codec import encode
    from dwcore.schemas.deadletter import MAX_RAW_BYTES
    from dwcore.stream.processing import RawMessage, decode_batch

    raw = b"{" + b"x" * (2 * 1024 * 1024)
    (letter,) = decode_batch([RawMessage(b"k", raw, "dw.events:0:7")], now_ms=1).deadletters
    assert letter.size == len(raw) and letter.truncated
    assert letter.raw == raw[:MAX_RAW_BYTES]
    assert "invalid event" in letter.reason and str(len(raw)) in letter.reason
    assert len(encode(letter)) < 1024 * 1024  # publishable under Kafka's default message limit


def test_a_backlog_is_not_quiet_time():
    # After a takeover the new worker works through a backlog minutes after the events happened.
    # Judged by the wall clock, the attack looks quiet before its last renames are processed and
    # its incident closes without them; judged by the newest event processed, it does not.
    policy = load_policy()
    events = _renames("mallory", 300)
    wall = events[-1].time + 10 * 60_000
    by_clock: dict[str, bytes] = {}
    detect_user(by_clock, "mallory", events[:299], policy)
    early, _ = close_quiet(dict(by_clock), "mallory", wall, policy)
    assert [a.file_count for a in early if a.status == "closed"] == [299]  # what the clock alone did

    now = quiet_clock(wall, True, events[298].time)  # behind: the last rename is still waiting
    alerts, still_open = close_quiet(by_clock, "mallory", now, policy)
    assert alerts == [] and still_open
    detect_user(by_clock, "mallory", events[299:], policy)
    alerts, still_open = close_quiet(by_clock, "mallory", quiet_clock(wall, False, events[-1].time), policy)
    assert [a.file_count for a in alerts if a.status == "closed"] == [300] and not still_open


def test_the_quiet_clock_is_the_wall_clock_once_caught_up():
    assert quiet_clock(5_000, False, 1_000) == 5_000
    assert quiet_clock(5_000, True, 1_000) == 1_000
    assert quiet_clock(5_000, True, None) == 5_000  # nothing processed yet: nothing to close either
    assert quiet_clock(5_000, True, 9_000) == 5_000  # an event stamped ahead never moves time on
