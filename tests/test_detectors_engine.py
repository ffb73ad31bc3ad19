"""Detector behaviour with explicit timestamps: thresholds, windows, incidents and their versions."""
from __future__ import annotations

import itertools

import pytest

from dwcore.detectors.engine import evaluate, tick
from dwcore.detectors.policy import Policy, load_policy
from dwcore.detectors.state import UserState, decode_state, encode_state
from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.event import AccessEvent, Activity, make_event

T0 = 1_700_000_000_000  # epoch ms; every time below is T0 + offset
_ids = itertools.count()
SKELETON_RULES = ("mass_rename", "bulk_delete", "agent_alarm")


def rename(ms: int, user: str = "alice", path: str | None = None, new_ext: str = ".locked",
           device: str = "fs01", share: str = "data") -> AccessEvent:
    n = next(_ids)
    old = path or f"/srv/data/report_{n}.docx"
    return make_event(Activity.RENAME, uid=f"ev{n}", time=T0 + ms, user_name=user, device=device,
                      share=share, file_path=old, file_new_path=old + new_ext)


def delete(ms: int, user: str = "alice", path: str | None = None) -> AccessEvent:
    n = next(_ids)
    return make_event(Activity.DELETE, uid=f"ev{n}", time=T0 + ms, user_name=user, device="fs01",
                      file_path=path or f"/srv/data/old_{n}.csv")


def alarm(ms: int, device: str = "fs01", name: str = "queue_overflow") -> AccessEvent:
    n = next(_ids)
    return make_event(Activity.OTHER, uid=f"ev{n}", time=T0 + ms, user_name="alice", device=device,
                      file_path="/srv/data", alarm=name, message="inotify queue overflowed")


def renames(n: int, start_ms: int = 0, step_ms: int = 10, **kw: object) -> list[AccessEvent]:
    return [rename(start_ms + i * step_ms, **kw) for i in range(n)]  # type: ignore[arg-type]


def skeleton_policy() -> Policy:
    """Only the counting rules pinned here (renames to .locked would also trip known_extension)."""
    return load_policy(overrides={r.name: {"enabled": False} for r in load_policy().rules
                                  if r.name not in SKELETON_RULES})


@pytest.fixture(scope="module")
def policy() -> Policy:
    return skeleton_policy()


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


def test_alert_explains_itself(policy: Policy) -> None:
    _, alerts = run(policy, [renames(25, start_ms=1_000, step_ms=100)])
    (a,) = alerts
    rule = policy.get("mass_rename")
    assert (a.rule, a.rule_uid, a.user, a.signal) == ("mass_rename", rule.id, "alice", "renames")
    assert (a.observed, a.threshold, a.window_s, a.file_count) == (25, 25, 10, 25)
    assert (a.first_seen, a.detected_at, a.last_seen) == (T0 + 1_000, T0 + 3_400, T0 + 3_400)
    assert (a.version, a.status) == (1, "open")
    assert a.devices == ["fs01"] and a.shares == ["data"] and len(a.paths) == 20
    assert "attack.t1486" in a.tags
    ev = {(e.kind, e.name): e for e in a.evidences}
    assert ev[("rule", "mass_rename")].value == 25 and ev[("rule", "mass_rename")].threshold == 25
    assert ev[("data", "long_lived")].value == 25
    assert ev[("feature", "renames")].value == 25
    assert "mass_rename: 25 renames within 10 s (threshold 25, high)" in a.description
    assert "25 renames changed the extension; top new extension .locked (25)" in a.description
    assert "25 long-lived files" in a.description


def test_window_boundary_is_exclusive(policy: Policy) -> None:
    # 25 renames spanning exactly 10 s are not "within 10 s"; 1 ms less is.
    evs = renames(24, step_ms=1) + [rename(10_000)]
    assert run(policy, [evs])[1] == []
    evs = renames(24, step_ms=1) + [rename(9_999)]
    assert len(run(policy, [evs])[1]) == 1


def test_incident_grows_in_versions_with_real_totals(policy: Policy) -> None:
    # 300 renames, one event per batch: the pager sees a few versions, not 276 alerts, and the
    # last one carries the real totals (the skeleton stored 197 and repeated the threshold).
    st, alerts = run(policy, [[e] for e in renames(300, step_ms=10)])
    assert len({a.uid for a in alerts}) == 1
    assert [a.version for a in alerts] == list(range(1, len(alerts) + 1))
    assert 3 <= len(alerts) <= 8
    assert alerts[0].severity == Severity.HIGH and alerts[-1].severity == Severity.CRITICAL
    last = alerts[-1]
    assert last.file_count >= 200 and last.observed >= 200 and last.threshold == 100
    # The closing version says the final truth.
    _, closing = tick(st, "alice", T0 + 300 * 10 + 60_001, policy)
    (c,) = closing
    assert (c.uid, c.status, c.version, c.file_count) == (last.uid, "closed", last.version + 1, 300)
    assert c.last_seen == T0 + 2_990


def test_one_batch_burst_is_one_alert_at_its_peak(policy: Policy) -> None:
    _, alerts = run(policy, [renames(300, step_ms=10)])
    (a,) = alerts
    assert (a.severity, a.file_count, a.observed) == (Severity.CRITICAL, 300, 300)


def test_spreading_to_another_server_is_a_new_version(policy: Policy) -> None:
    st, first = run(policy, [renames(30, step_ms=10)])
    st, more = run(policy, [renames(5, start_ms=400, step_ms=10, device="fs02")], state=st)
    assert [a.version for a in first + more] == [1, 2]
    assert more[0].uid == first[0].uid and more[0].devices == ["fs01", "fs02"]


def test_quiet_closes_then_new_burst_gets_new_uid_and_its_own_events(policy: Policy) -> None:
    st, first = run(policy, [renames(30, step_ms=10)])
    # 24 more renames after the cooldown: closes the first incident, not enough for a new one.
    st, later = run(policy, [renames(24, start_ms=120_000, step_ms=10)], state=st)
    assert [(a.uid, a.status) for a in later] == [(first[0].uid, "closed")]
    st, again = run(policy, [renames(1, start_ms=121_000)], state=st)
    assert len(again) == 1 and again[0].uid != first[0].uid and again[0].file_count == 25


def test_two_users_are_independent_and_other_users_are_ignored(policy: Policy) -> None:
    _, alerts = run(policy, [renames(20) + renames(20, user="bob")])
    assert alerts == []
    _, alerts = run(policy, [renames(30, user="bob")], user="alice")
    assert alerts == []


def test_state_roundtrip_mid_burst_continues_identically(policy: Policy) -> None:
    evs = renames(120, step_ms=20)
    st1, a1 = run(policy, [evs[:60]])
    st1 = decode_state(encode_state(st1))
    st1, b1 = run(policy, [evs[60:]], state=st1)
    _, a2 = run(policy, [evs[:60], evs[60:]])
    assert a1 + b1 == a2


def test_evaluate_does_not_modify_the_given_state(policy: Policy) -> None:
    st, _ = run(policy, [renames(10)])
    before = encode_state(st)
    evaluate(st, "alice", renames(30, start_ms=200), policy)
    assert encode_state(st) == before


def test_late_event_completes_a_burst(policy: Policy) -> None:
    evs = renames(25, step_ms=100)
    late = evs.pop(3)
    st, alerts = run(policy, [evs])
    assert alerts == []
    _, alerts = run(policy, [[late]], state=st)
    assert len(alerts) == 1 and alerts[0].first_seen == T0


def test_state_stays_small_under_a_flood(policy: Policy) -> None:
    st, _ = run(policy, [renames(5_000, step_ms=2)])
    st, _ = run(policy, [renames(5_000, start_ms=10_001, step_ms=2)], state=st)
    assert len(encode_state(st)) < 16_000
    assert all(len(c.times) <= policy.get("mass_rename").cap for c in st.counters["mass_rename"].values())


def test_bulk_delete_counts_long_lived_data_not_churn(policy: Policy) -> None:
    _, alerts = run(policy, [[delete(i * 10) for i in range(60)]])
    assert [(a.rule, a.severity) for a in alerts] == [("bulk_delete", Severity.HIGH)]
    assert {(e.name, e.value) for e in alerts[0].evidences if e.kind == "data"} == {("long_lived", 60.0)}
    # A build directory the same user wrote minutes earlier: 300 creates, then 300 deletes.
    paths = [f"/srv/build/obj/{i}.o" for i in range(300)]
    creates = [make_event(Activity.CREATE, uid=f"c{i}", time=T0 + i, user_name="alice", device="fs01",
                          file_path=p, entropy=6.0, magic_type="elf") for i, p in enumerate(paths)]
    deletes = [delete(120_000 + i, path=p) for i, p in enumerate(paths)]
    _, alerts = run(policy, [creates, deletes])
    assert alerts == []


def test_agent_alarm_one_incident_per_device_and_alarm(policy: Policy) -> None:
    _, alerts = run(policy, [[alarm(0), alarm(10), alarm(20, device="fs02")]])
    assert sorted((a.rule, a.devices[0]) for a in alerts) == [("agent_alarm", "fs01"), ("agent_alarm", "fs02")]
    assert all(a.severity == Severity.MEDIUM for a in alerts)
    assert 'raised queue_overflow: "inotify queue overflowed"' in alerts[0].description


def test_disabled_rule_does_not_alert() -> None:
    pol = load_policy(overrides={"mass_rename": {"enabled": False}, "known_extension": {"enabled": False},
                                 "slow_attack": {"enabled": False}})
    assert run(pol, [renames(300)])[1] == []


def test_uid_is_deterministic_across_runs(policy: Policy) -> None:
    evs = renames(30)
    assert run(policy, [evs])[1][0].uid == run(policy, [evs])[1][0].uid


def test_alarm_keys_are_bounded(policy: Policy) -> None:
    st, _ = run(policy, [[alarm(i, device=f"fs{i}") for i in range(500)]])
    assert len(st.incidents) <= 16 and len(st.counters["agent_alarm"]) <= 64
