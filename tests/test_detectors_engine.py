"""Detector behaviour with explicit timestamps: thresholds, windows, incidents, evidence."""
from __future__ import annotations

import itertools

import pytest

from dwcore.detectors.engine import evaluate
from dwcore.detectors.policy import Policy, load_policy
from dwcore.detectors.state import UserState, decode_state, encode_state
from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.event import AccessEvent, Activity, make_event

T0 = 1_700_000_000_000  # epoch ms; every time below is T0 + offset
_ids = itertools.count()


def rename(ms: int, user: str = "alice", path: str | None = None, new_ext: str = ".locked",
           device: str = "fs01", share: str = "data") -> AccessEvent:
    n = next(_ids)
    old = path or f"/srv/data/report_{n}.docx"
    return make_event(Activity.RENAME, uid=f"ev{n}", time=T0 + ms, user_name=user, device=device,
                      share=share, file_path=old, file_new_path=old + new_ext)


def delete(ms: int, user: str = "alice") -> AccessEvent:
    n = next(_ids)
    return make_event(Activity.DELETE, uid=f"ev{n}", time=T0 + ms, user_name=user, device="fs01",
                      file_path=f"/srv/data/old_{n}.csv")


def alarm(ms: int, device: str = "fs01", name: str = "queue_overflow") -> AccessEvent:
    n = next(_ids)
    return make_event(Activity.OTHER, uid=f"ev{n}", time=T0 + ms, user_name="alice", device=device,
                      file_path="/srv/data", alarm=name, message="inotify queue overflowed")


def renames(n: int, start_ms: int = 0, step_ms: int = 10, **kw: object) -> list[AccessEvent]:
    return [rename(start_ms + i * step_ms, **kw) for i in range(n)]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def run(policy: Policy, batches: list[list[AccessEvent]], user: str = "alice",
        state: UserState | None = None) -> tuple[UserState | None, list[Alert]]:
    out: list[Alert] = []
    for batch in batches:
        state, alerts = evaluate(state, user, batch, policy)
        out.extend(alerts)
    return state, out


@pytest.mark.parametrize(("count", "expected"), [(24, []), (25, [Severity.HIGH]), (26, [Severity.HIGH])])
def test_rename_threshold_below_at_above(policy: Policy, count: int, expected: list[Severity]) -> None:
    # One event per batch, as the agent's inline fast path sees them.
    _, alerts = run(policy, [[e] for e in renames(count, step_ms=100)])
    assert [a.severity for a in alerts] == expected


def test_alert_fields_explain_the_finding(policy: Policy) -> None:
    events = renames(25, start_ms=1000, step_ms=100)
    _, alerts = run(policy, [[e] for e in events])
    (a,) = alerts
    assert a.rule == "mass_rename" and a.rule_uid == policy.get("mass_rename").id
    assert a.user == "alice" and a.signal == "renames"
    assert a.severity_id == Severity.HIGH.ocsf_id
    assert a.first_seen == T0 + 1000 and a.detected_at == T0 + 1000 + 24 * 100
    assert (a.observed, a.threshold, a.window_s, a.file_count) == (25, 25, 10, 25)
    assert a.paths == [e.file_path for e in events[:20]]  # sample_paths, earliest first
    assert a.devices == ["fs01"] and a.shares == ["data"]
    assert "attack.t1486" in a.tags
    assert a.title == "Mass rename by alice: 25 files renamed to .locked in 3 s"
    assert "threshold of 25" in a.description and "2023-11-14T22:13:21.000Z" in a.description


def test_window_boundary_is_exclusive(policy: Policy) -> None:
    # 25 renames spanning exactly 10 s: the first has left the window when the 25th arrives.
    events = [rename(i * 10_000 // 24) for i in range(25)]
    assert events[-1].time - events[0].time == 10_000
    _, alerts = run(policy, [events])
    assert alerts == []
    _, alerts = run(policy, [events[:-1] + [rename(9_999)]])
    assert len(alerts) == 1


def test_slow_renames_over_a_long_time_do_not_alert(policy: Policy) -> None:
    # 1,000 renames, one every 500 ms: 20 per window, never 25 (low-and-slow is for baselines).
    events = renames(1000, step_ms=500)
    _, alerts = run(policy, [events[i:i + 50] for i in range(0, 1000, 50)])
    assert alerts == []


def test_escalation_to_critical_keeps_uid(policy: Policy) -> None:
    events = renames(120, step_ms=20)
    _, alerts = run(policy, [events[i:i + 10] for i in range(0, 120, 10)])
    assert [a.severity for a in alerts] == [Severity.HIGH, Severity.CRITICAL]
    high, crit = alerts
    assert high.uid == crit.uid and high.first_seen == crit.first_seen == events[0].time
    assert crit.detected_at == events[99].time and crit.threshold == 100
    assert crit.severity_id == 5 and "critical level of 100" in crit.description


def test_no_duplicate_alerts_for_one_burst(policy: Policy) -> None:
    # 60 s of renames at 5/s in small batches: one incident, one high alert.
    events = renames(300, step_ms=200)
    _, alerts = run(policy, [events[i:i + 3] for i in range(0, 300, 3)])
    assert [a.severity for a in alerts] == [Severity.HIGH]


def test_new_burst_after_cooldown_gets_new_uid(policy: Policy) -> None:
    cooldown_ms = int(policy.get("mass_rename").cooldown_s * 1000)
    first = renames(30, step_ms=10)
    quiet_end = first[-1].time - T0 + cooldown_ms
    # A burst starting inside the cooldown continues the incident: no new alert.
    within = renames(30, start_ms=quiet_end - 1000, step_ms=10)
    after = renames(30, start_ms=quiet_end + 5 * 60_000, step_ms=10)
    _, alerts = run(policy, [first, within, after])
    assert len(alerts) == 2
    assert alerts[0].uid != alerts[1].uid
    assert alerts[1].first_seen == after[0].time and alerts[1].file_count == 30


def test_burst_after_cooldown_does_not_reuse_old_events(policy: Policy) -> None:
    # With a cooldown shorter than the window, the closed burst's renames must not count again.
    short = load_policy(overrides={"mass_rename": {"cooldown_s": 1}})
    first = renames(30, step_ms=10)
    later = renames(10, start_ms=3000, step_ms=10)  # 3 s later: still inside the 10 s window
    _, alerts = run(short, [first, later])
    assert len(alerts) == 1


def test_two_users_are_independent(policy: Policy) -> None:
    a_events = renames(20, user="alice")
    b_events = renames(20, user="bob")
    sa, alerts_a = run(policy, [a_events], user="alice")
    sb, alerts_b = run(policy, [b_events], user="bob")
    assert alerts_a == alerts_b == []
    # 5 more for alice crosses her threshold; bob's 20 never add to it.
    _, more = run(policy, [renames(5, start_ms=300, user="alice")], user="alice", state=sa)
    assert [a.user for a in more] == ["alice"] and more[0].file_count == 25
    _, none = run(policy, [renames(4, start_ms=300, user="bob")], user="bob", state=sb)
    assert none == []


def test_events_of_another_user_are_ignored(policy: Policy) -> None:
    _, alerts = run(policy, [renames(50, user="bob")], user="alice")
    assert alerts == []


def test_state_roundtrip_mid_burst_continues_identically(policy: Policy) -> None:
    events = renames(150, step_ms=30)
    batches = [events[i:i + 7] for i in range(0, 150, 7)]
    _, straight = run(policy, batches)
    state: UserState | None = None
    resumed: list[Alert] = []
    for batch in batches:
        state, alerts = evaluate(state, "alice", batch, policy)
        resumed.extend(alerts)
        state = decode_state(encode_state(state))  # as the changelog table stores it
    assert resumed == straight
    assert [a.severity for a in straight] == [Severity.HIGH, Severity.CRITICAL]


def test_evaluate_does_not_modify_the_given_state(policy: Policy) -> None:
    state, _ = run(policy, [renames(10)])
    before = encode_state(state)
    evaluate(state, "alice", renames(30, start_ms=200), policy)
    assert encode_state(state) == before


def test_out_of_order_events_within_and_across_batches(policy: Policy) -> None:
    events = renames(30, step_ms=100)
    shuffled = events[::-1]
    _, alerts = run(policy, [shuffled[:15], shuffled[15:]])  # newest first, across two batches
    assert len(alerts) == 1
    assert alerts[0].first_seen == events[0].time and alerts[0].file_count == 30


def test_late_event_completes_a_burst(policy: Policy) -> None:
    # 24 renames, then a much newer one (its window holds only 4), then the 25th of the early
    # burst arrives late: it still completes that burst.
    early = renames(24, step_ms=100)
    _, alerts = run(policy, [early, [rename(12_000)]])
    assert alerts == []
    _, alerts = run(policy, [early, [rename(12_000)], [rename(50)]])
    assert len(alerts) == 1 and alerts[0].first_seen == T0 and alerts[0].detected_at == T0 + 50


def test_300_renames_to_locked_give_critical_with_evidence(policy: Policy) -> None:
    events = renames(300, step_ms=10, new_ext=".locked")
    _, alerts = run(policy, [events])
    (a,) = alerts
    assert a.severity == Severity.CRITICAL and a.file_count == 300
    assert ".locked" in a.title and "renamed to .locked" in a.description
    assert "300 of 300 renames changed the file extension" in a.description
    assert len(a.paths) == 20 and a.paths[0] == events[0].file_path


def test_renames_keeping_the_extension_say_so(policy: Policy) -> None:
    events = [rename(i * 10, path=f"/srv/a/{i}.jpg", new_ext="") for i in range(30)]
    events = [make_event(Activity.RENAME, uid=e.uid, time=e.time, user_name="alice", device="fs01",
                         file_path=e.file_path, file_new_path=e.file_path.replace("/a/", "/b/"))
              for e in events]
    _, alerts = run(policy, [events])
    assert "No rename changed the file extension" in alerts[0].description
    assert "renamed to" not in alerts[0].title


def test_state_stays_small_under_a_flood(policy: Policy) -> None:
    # 10,000 renames at LockBit speed (~420/s) in stream-sized batches.
    events = renames(10_000, step_ms=2)
    state, alerts = run(policy, [events[i:i + 500] for i in range(0, 10_000, 500)])
    assert [a.severity for a in alerts] == [Severity.HIGH, Severity.CRITICAL] or \
        [a.severity for a in alerts] == [Severity.CRITICAL]
    assert len(encode_state(state)) < 4096


def test_bulk_delete_threshold_and_escalation(policy: Policy) -> None:
    _, below = run(policy, [[delete(i * 10) for i in range(49)]])
    assert below == []
    _, alerts = run(policy, [[delete(i * 10) for i in range(50)], [delete(500 + i) for i in range(150)]])
    assert [a.severity for a in alerts] == [Severity.HIGH, Severity.CRITICAL]
    assert alerts[0].uid == alerts[1].uid and alerts[1].signal == "deletes"
    assert "attack.t1485" in alerts[0].tags and alerts[1].file_count == 200


def test_deletes_do_not_count_as_renames(policy: Policy) -> None:
    events = [delete(i * 10) for i in range(20)] + renames(20, step_ms=10)
    _, alerts = run(policy, [events])
    assert alerts == []


def test_agent_alarm_one_alert_per_device_and_alarm(policy: Policy) -> None:
    batches = [[alarm(0), alarm(100)], [alarm(5_000)], [alarm(6_000, device="fs02")],
               [alarm(7_000, name="attribution_lost")]]
    _, alerts = run(policy, batches)
    assert [(a.severity, a.devices) for a in alerts] == [
        (Severity.MEDIUM, ["fs01"]), (Severity.MEDIUM, ["fs02"]), (Severity.MEDIUM, ["fs01"])]
    assert len({a.uid for a in alerts}) == 3
    assert alerts[0].title == "Agent alarm queue_overflow on fs01"
    assert "inotify queue overflowed" in alerts[0].description and alerts[0].signal == "alarms"


def test_agent_alarm_after_cooldown_is_a_new_incident(policy: Policy) -> None:
    cooldown_ms = int(policy.get("agent_alarm").cooldown_s * 1000)
    _, alerts = run(policy, [[alarm(0)], [alarm(cooldown_ms // 2)], [alarm(cooldown_ms * 3)]])
    assert len(alerts) == 2 and alerts[0].uid != alerts[1].uid


def test_disabled_rule_does_not_alert() -> None:
    off = load_policy(overrides={"mass_rename": {"enabled": False}})
    _, alerts = run(off, [renames(200)])
    assert alerts == []


def test_uid_is_deterministic_across_runs(policy: Policy) -> None:
    events = renames(40)
    _, a1 = run(policy, [events])
    _, a2 = run(policy, [events[:13], events[13:]])
    assert a1[0].uid == a2[0].uid


def test_alarm_keys_are_bounded(policy: Policy) -> None:
    # A broken fleet raising alarms from many devices must not grow one user's state without end.
    from dwcore.detectors.engine import MAX_KEYS_PER_RULE

    state, alerts = run(policy, [[alarm(i, device=f"fs{i:03d}") for i in range(200)]])
    assert len(alerts) == 200
    assert len(state.rules["agent_alarm"]) == MAX_KEYS_PER_RULE
    assert f"fs{199:03d}\x1fqueue_overflow" in state.rules["agent_alarm"]  # the newest are kept
