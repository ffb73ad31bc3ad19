"""The pure entry points: (user state, new events, policy) -> (new state, alerts).

Time comes only from the events (or, for ``tick``, from the caller), so the same call gives the
same answer in the agent, in a stream worker, after a restart from the changelog, and in a test
with made-up timestamps. A batch is sorted by event time first. Per incident at most one alert
version per batch, so a 300-file burst arriving in one batch pages once, with all 300 files.

Per event: ``features.classify`` -> the user's horizons and online baseline -> every enabled rule
whose spec counts the event (after allow-lists; overrides count matching events separately under
changed thresholds) -> the incident of the event's key.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from dwcore.detectors import burst, drill, explain, incident
from dwcore.detectors.baseline import Scorer
from dwcore.detectors.features import Facts, classify
from dwcore.detectors.lists import load_lists
from dwcore.detectors.policy import Policy, RulePolicy, matches
from dwcore.detectors.spec import RuleSpec, coded_specs, feature_rule
from dwcore.detectors.state import Counter, Incident, Item, UserState, copy_state
from dwcore.logfmt import kv
from dwcore.schemas.alert import Alert, AnomalyAnalysis
from dwcore.schemas.event import AccessEvent, Source

log = logging.getLogger(__name__)

MAX_KEYS_PER_RULE = 64  # counting keys kept per rule and user (alarms: device x alarm; overrides)
MAX_INCIDENTS = 16  # open incidents per user (alarm keys are the only source of more than one)
_OV = "\x1e"  # separates an incident key from an override's counting suffix


@dataclass(frozen=True)
class _Compiled:
    active: tuple[tuple[RuleSpec, RulePolicy], ...]
    file_active: tuple[tuple[RuleSpec, RulePolicy], ...]  # ``active`` without the S3-only rules
    rules: dict[str, RulePolicy]
    signals: dict[str, str]
    specs: dict[str, RuleSpec]
    # (S3 event?, the event's features) -> the rules whose gates pass, in ``active`` order. Feature
    # counts are always positive, so the names alone decide the gates; a few dozen combinations occur.
    gated: dict[tuple[bool, tuple[str, ...]], tuple[tuple[RuleSpec, RulePolicy], ...]] = field(default_factory=dict)

    def candidates(self, s3: bool, counts: dict[str, int]) -> tuple[tuple[RuleSpec, RulePolicy], ...]:
        sig = (s3, tuple(counts))
        hit = self.gated.get(sig)
        if hit is None:
            if len(self.gated) >= 4096:
                self.gated.clear()
            hit = self.gated[sig] = tuple((spec, rule) for spec, rule in (self.active if s3 else self.file_active)
                                          if not spec.requires or counts.get(spec.requires))
        return hit


_compiled: dict[int, tuple[Policy, _Compiled]] = {}


def _compile(policy: Policy) -> _Compiled:
    # Policies hold dicts (not hashable): cache by identity, checked, and bounded.
    hit = _compiled.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    if len(_compiled) >= 16:
        _compiled.clear()
    comp = _compile_uncached(policy)
    _compiled[id(policy)] = (policy, comp)
    return comp


def _compile_uncached(policy: Policy) -> _Compiled:
    coded = coded_specs()
    active = []
    for rule in policy.enabled_rules():
        spec = coded.get(rule.name) or (feature_rule(rule.name, rule.signal) if rule.signal else None)
        if spec is not None:
            active.append((spec, rule))
    rules = {r.name: r for r in policy.rules}
    signals = {s.name: s.signal for s, _ in active}
    file_active = tuple((s, r) for s, r in active if not s.s3_only)
    return _Compiled(tuple(active), file_active, rules, signals, {s.name: s for s, _ in active})


def _lists(policy: Policy):
    s = policy.settings
    return load_lists(s.extra_extensions, s.extra_note_names, s.extra_common_extensions)


def _variant(
    rule: RulePolicy, ev: AccessEvent, policy: Policy, groups: tuple[str, ...]
) -> tuple[RulePolicy, str] | None:
    """The rule as it applies to ``ev`` (None: allow-listed), and the counting suffix of its override."""
    for a in policy.allow:
        if (not a.rules or rule.name in a.rules) and matches(a.match, ev.user_name, groups, ev.file_path,
                                                              ev.process_exe, ev.device):
            return None
    for i in range(len(policy.overrides) - 1, -1, -1):
        ov = policy.overrides[i]
        if (not ov.rules or rule.name in ov.rules) and matches(ov.match, ev.user_name, groups, ev.file_path,
                                                                ev.process_exe, ev.device):
            changed = msgspec.structs.replace(rule, **ov.set)
            return (changed, f"{_OV}{i}") if changed.enabled else None
    return rule, ""


def _item(ev: AccessEvent, facts: Facts, spec: RuleSpec | None) -> Item:
    return Item(time=ev.time, path=ev.file_path, device=ev.device, share=ev.share, new_ext=facts.new_ext,
                note=spec.describe(ev) if spec is not None and spec.describe else "", kind=facts.kind,
                kib=facts.counts.get("kib_written", 0), why=facts.why)


def _bound(st: UserState) -> None:
    for keys in st.counters.values():
        if len(keys) > MAX_KEYS_PER_RULE:
            for k in sorted(keys, key=lambda k: keys[k].max_time)[: len(keys) - MAX_KEYS_PER_RULE]:
                del keys[k]
    if len(st.incidents) > MAX_INCIDENTS:
        for k in sorted(st.incidents, key=lambda k: st.incidents[k].last_seen)[: len(st.incidents) - MAX_INCIDENTS]:
            del st.incidents[k]


class _Run:
    def __init__(self, st: UserState, user: str, policy: Policy, comp: _Compiled) -> None:
        self.st, self.user, self.policy, self.comp = st, user, policy, comp
        self.alerts: list[Alert] = []
        self.touched: dict[str, Incident] = {}
        self.anomalies: list[AnomalyAnalysis] = []

    def emit(self, inc: Incident, status: str) -> None:
        incident.mark_emitted(inc)
        self.alerts.append(explain.build_alert(inc, self.user, self.comp.rules, self.comp.signals,
                                               self.st.horizons, self.anomalies, status, self.comp.specs))

    def close(self, key: str, inc: Incident) -> None:
        """Closing version with final counts; the next burst must cross thresholds on its own."""
        inc.closed = True
        if not inc.version and inc.target:
            # Opened and gone quiet within this one batch (a backlog replayed after downtime, say):
            # it still pages first, then closes, instead of vanishing unannounced.
            self.emit(inc, "open")
        if inc.version:
            self.emit(inc, "closed")
        self.touched.pop(key, None)
        del self.st.incidents[key]
        for name, keys in self.st.counters.items():
            rule = self.comp.rules.get(name)
            for ckey, c in keys.items():
                if rule is not None and ckey.split(_OV, 1)[0] == key:
                    burst.reset_after(c, inc.last_seen, rule)


def evaluate(
    state: UserState | None,
    user: str,
    events: Sequence[AccessEvent],
    policy: Policy,
    scorer: Scorer | None = None,
    *,
    owned: bool = False,
) -> tuple[UserState, list[Alert]]:
    """Count ``user``'s events into their state and return the alert versions this batch raised.

    ``state`` is not modified (unless ``owned``: the caller hands it over, e.g. freshly decoded,
    and saves a copy); use the returned one. Events of other users are ignored (state is per user;
    the caller groups by user). ``scorer`` scores finished minutes with trained models; without it
    the online EWMA baseline does.
    """
    st = (state if owned else copy_state(state)) if state is not None else UserState()
    comp = _compile(policy)
    lists = _lists(policy)
    settings = policy.settings
    groups = policy.groups_of(user)
    run = _Run(st, user, policy, comp)
    ignored = 0
    for ev in sorted(events, key=lambda e: e.time):
        if ev.user_name != user:
            ignored += 1
            continue
        t = ev.time
        facts = classify(ev, st.memory, lists, settings)
        found = st.baseline.add(t, facts.counts, settings.anomaly_z, settings.anomaly_min_minutes, user, scorer)
        if found:
            run.anomalies = found
            facts.add("anomalous_minutes")
        st.horizons.add(t, facts.counts)
        if st.incidents:
            for key, inc in list(st.incidents.items()):
                if incident.is_quiet(inc, t):
                    run.close(key, inc)
        _apply_rules(run, ev, facts, groups)
    for inc in run.touched.values():
        if incident.needs_version(inc, settings.incident_growth):
            run.emit(inc, "open")
    _bound(st)
    if ignored:
        log.warning("events_for_other_user %s", kv(user=user, ignored=ignored))
    return st, run.alerts


def _apply_rules(run: _Run, ev: AccessEvent, facts: Facts, groups: tuple[str, ...]) -> None:
    st, t = run.st, ev.time
    hits: dict[str, list[tuple[RuleSpec, RulePolicy, Counter, int, int]]] = {}
    drill_run = drill.event_drill(ev)
    for spec, base in run.comp.candidates(ev.source == Source.S3, facts.counts):
        if base.buckets and ev.share not in base.buckets:
            continue  # a rule scoped to some buckets (e.g. the protected ones)
        key = spec.key(ev, facts)
        if key is None:
            continue
        key = drill.drill_key(key, drill_run)  # a drill counts and alerts apart, per run
        variant = _variant(base, ev, run.policy, groups)
        if variant is None:
            continue
        rule, suffix = variant
        keys = st.counters.setdefault(rule.name, {})
        c = keys.get(key + suffix)
        if c is None:
            c = keys[key + suffix] = Counter()
        n, end = burst.count(c, t, rule)
        for _ in range(min(spec.weight(ev), rule.cap) - 1 if spec.weight is not None else 0):
            n, end = burst.count(c, t, rule)
        if n >= rule.cap and spec.feature:
            # The window list is capped to bound the state; the rings know the real count (exact
            # for 10 s windows, to one bucket for longer ones).
            n = max(n, st.horizons.window_total(spec.feature, t, rule.window_ms))
        hits.setdefault(key, []).append((spec, rule, c, n, end))
    for key, matched in hits.items():
        inc = st.incidents.get(key)
        if inc is None:
            crossing = [h for h in matched if h[3] >= h[1].threshold]
            if not crossing:
                for spec, rule, c, _, _ in matched:
                    burst.keep_pending(c, _item(ev, facts, spec), rule)
                continue
            spec, rule, c, n, end = crossing[0]
            first = burst.first_in_window(c, end, rule)
            inc = st.incidents[key] = incident.open_incident(run.user, key, first, t)
            inc.drill = drill.is_drill_key(key)
            seen: set[tuple[int, str]] = set()
            for _, h_rule, h_c, _, _ in matched:
                for item in h_c.pending:
                    if item.time > end - h_rule.window_ms and (item.time, item.path) not in seen:
                        seen.add((item.time, item.path))
                        incident.add_evidence(inc, item, h_rule.sample_paths)
                h_c.pending = []
        sample = max(rule.sample_paths for _, rule, _, _, _ in matched)
        incident.add_evidence(inc, _item(ev, facts, matched[0][0]), sample)
        for spec, rule, c, n, end in matched:
            rate = st.horizons.peak_per_second(spec.feature, t) if spec.feature else 0
            incident.record_hit(inc, rule, rule.signal or spec.signal, n, t, burst.first_in_window(c, end, rule),
                                rate)
        # The window that crossed may hold more matches than the evidence (pending is capped).
        unweighted = [h[3] for h in matched if h[0].weight is None]
        if unweighted:
            inc.count = max(inc.count, *unweighted)
        run.touched[key] = inc


def warm_up(policy: Policy) -> None:
    """Load the name lists and compile the rules now, so the first event does not pay for it."""
    _compile(policy)
    _lists(policy)


def tick(state: UserState | None, user: str, now_ms: int, policy: Policy) -> tuple[UserState, list[Alert]]:
    """Close the user's incidents that have been quiet until ``now_ms`` (closing versions).

    The callers' clock decides when quiet is quiet enough; detectors read no clock themselves.
    """
    st = copy_state(state) if state is not None else UserState()
    run = _Run(st, user, policy, _compile(policy))
    for key, inc in list(st.incidents.items()):
        if incident.is_quiet(inc, now_ms):
            run.close(key, inc)
    return st, run.alerts


def has_open_incident(state: UserState) -> bool:
    return bool(state.incidents)
