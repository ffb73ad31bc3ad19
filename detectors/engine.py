"""The pure entry point: (user state, new events, policy) -> (new state, alerts).

Time comes only from the events, so the same call gives the same answer in the agent, in a
stream worker, after a restart from the changelog, and in a test with made-up timestamps.
A batch is sorted by event time first; events a little late across batches are still counted
(see ``burst``). Per incident at most one alert per batch, at the highest severity reached in it,
so a 300-file burst arriving in one batch pages once, as critical, with file_count 300.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from dwcore.detectors import burst, rules_alarm, rules_delete, rules_rename, rules_s3
from dwcore.detectors.policy import Policy, RulePolicy
from dwcore.detectors.spec import RuleSpec
from dwcore.detectors.state import Incident, KeyState, UserState, copy_state
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent

log = logging.getLogger(__name__)

RULES: dict[str, RuleSpec] = {
    s.name: s for s in (rules_rename.SPEC, rules_delete.SPEC, rules_alarm.SPEC, *rules_s3.SPECS)
}
MAX_KEYS_PER_RULE = 64  # incident keys kept per rule and user (alarms: device x alarm)


def _emit(spec: RuleSpec, inc: Incident, rule: RulePolicy, user: str, key: str, out: list[Alert]) -> None:
    if not burst.needs_alert(inc):
        return
    alert = spec.alert(inc, rule, user, key)
    inc.emitted = inc.target
    out.append(alert)


def _bound_keys(keys: dict[str, KeyState]) -> None:
    # A flood of distinct alarm keys must not grow the state: forget the least recently active.
    if len(keys) > MAX_KEYS_PER_RULE:
        for k in sorted(keys, key=lambda k: keys[k].max_time)[: len(keys) - MAX_KEYS_PER_RULE]:
            del keys[k]


def evaluate(
    state: UserState | None, user: str, events: Sequence[AccessEvent], policy: Policy
) -> tuple[UserState, list[Alert]]:
    """Count ``user``'s events into their state and return the alerts this batch raised.

    ``state`` is not modified; use the returned one. Events of other users are ignored (state is
    per user; the caller groups by user).
    """
    st = copy_state(state) if state is not None else UserState(rules={})
    active = [(RULES[r.name], r) for r in policy.enabled_rules() if r.name in RULES]
    alerts: list[Alert] = []
    touched: dict[tuple[str, str], tuple[RuleSpec, RulePolicy, KeyState]] = {}
    ignored = 0
    for ev in sorted(events, key=lambda e: e.time):
        if ev.user_name != user:
            ignored += 1
            continue
        for spec, rule in active:
            if rule.buckets and ev.share not in rule.buckets:
                continue  # a rule scoped to some buckets (e.g. the protected ones)
            key = spec.key(ev)
            if key is None:
                continue
            keys = st.rules.setdefault(rule.name, {})
            ks = keys.get(key)
            if ks is None:
                ks = keys[key] = KeyState(times=[], pending=[])
            item = spec.item(ev)
            for _ in range(1 if spec.weight is None else min(spec.weight(ev), rule.cap)):
                closed = burst.step(ks, item, rule, user, key)
                if closed is not None:
                    _emit(spec, closed, rule, user, key, alerts)
            touched[(rule.name, key)] = (spec, rule, ks)
    for (_, key), (spec, rule, ks) in touched.items():
        if ks.incident is not None:
            _emit(spec, ks.incident, rule, user, key, alerts)
    for keys in st.rules.values():
        _bound_keys(keys)
    if ignored:
        log.warning("events_for_other_user user=%s ignored=%d", user, ignored)
    return st, alerts
