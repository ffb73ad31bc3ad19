"""Turning an incident into an Alert that explains itself.

An analyst paged at night should read, without a query: which rules fired with which real counts
against which thresholds in which windows, since when, on which machines and files, what kind of
data was hit (long-lived files, or churn of files the same user had just created), the content
evidence (entropy jumps, lost file types), the user's activity over the last minutes, and how far
that is from the user's learned baseline. ``evidences`` and ``anomaly_analyses`` carry the same
facts as data (OCSF), the description as text.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from dwcore.detectors.horizons import FEATURES, HORIZONS_S, Horizons
from dwcore.detectors.incident import OTHER_EXT, rank
from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.spec import RuleSpec
from dwcore.detectors.state import Incident
from dwcore.schemas.alert import Alert, AnomalyAnalysis, Evidence, Severity

PATHS_IN_TEXT = 3  # paths quoted in the description; the full sample is in Alert.paths
FEATURE_HORIZON = 1  # the 5-minute horizon is what an alert quotes as "recent activity"
KIND_TEXT = {"long_lived": "long-lived files", "churn": "files the same user had just created (churn)",
             "new": "new files"}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def seconds(value: float) -> str:
    return f"{value:g} s"


def span(inc: Incident) -> str:
    """How long the incident has lasted so far, rounded up to whole seconds (at least 1 s)."""
    return seconds(max(1, math.ceil((inc.last_seen - inc.first_seen + 1) / 1000)))


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def where(inc: Incident) -> str:
    parts = []
    if inc.devices:
        parts.append("on " + ", ".join(inc.devices))
    if inc.shares:
        parts.append("(share " + ", ".join(inc.shares) + ")")
    return " ".join(parts)


def top_rule(inc: Incident, order: dict[str, int]) -> str:
    """The rule that speaks for the incident: highest level, then the one listed first in the policy."""
    return max(inc.rules, key=lambda n: (rank(inc.rules[n].level), -order.get(n, len(order))))


def _rule_sentence(name: str, inc: Incident, rules: dict[str, RulePolicy], signals: dict[str, str]) -> str:
    hit = inc.rules[name]
    return (f"{name}: {hit.observed} {signals.get(name, name)} within {seconds(hit.window_s)} "
            f"(threshold {hit.threshold}, {hit.level})")


def _extensions(inc: Incident) -> str:
    if not inc.ext_changed:
        return ""
    top, top_n = max(inc.exts.items(), key=lambda kv: kv[1])
    if top == "(none)":
        return f"{inc.ext_changed} renames changed the extension; most removed it ({top_n})."
    return f"{inc.ext_changed} renames changed the extension; top new extension {top} ({top_n})."


def _kinds(inc: Incident) -> str:
    if not inc.kinds:
        return ""
    parts = [f"{n} {KIND_TEXT.get(k, k)}" for k, n in sorted(inc.kinds.items(), key=lambda kv: -kv[1])]
    return "Data hit: " + ", ".join(parts) + "."


def build_alert(
    inc: Incident,
    user: str,
    rules: dict[str, RulePolicy],
    signals: dict[str, str],
    horizons: Horizons,
    anomalies: Sequence[AnomalyAnalysis],
    status: str,
    specs: Mapping[str, RuleSpec] | None = None,
) -> Alert:
    name = top_rule(inc, {n: i for i, n in enumerate(rules)})
    rule, hit = rules[name], inc.rules[name]
    severity = Severity(inc.target)
    files = plural(inc.count, "file")
    top_spec = (specs or {}).get(name)
    if top_spec is not None and top_spec.amount is not None:
        files = top_spec.amount(hit.observed)
    elif inc.exts and inc.ext_changed * 2 > inc.count:
        top = max(inc.exts.items(), key=lambda kv: kv[1])[0]
        if top not in ("(none)", OTHER_EXT):
            files += f" renamed to {top}"
    more = len(inc.rules) - 1
    title = f"{rule.title} by {user}: {files} in {span(inc)}" + (f" (+{plural(more, 'more rule')})" if more else "")
    fired = "; ".join(_rule_sentence(n, inc, rules, signals)
                      for n in sorted(inc.rules, key=lambda n: inc.rules[n].first_seen))
    feats = horizons.snapshot(FEATURE_HORIZON, inc.last_seen)
    active = {k: v for k, v in feats.items() if v and k != "events"}
    activity = ", ".join(f"{k} {v}" for k, v in active.items())
    shown = ", ".join(inc.paths[:PATHS_IN_TEXT])
    rest = inc.count - min(len(inc.paths), PATHS_IN_TEXT)
    own = [sp.sentence(user, inc.rules[n].observed, list(inc.shares))
           for n, sp in (specs or {}).items() if n in inc.rules and sp.sentence is not None]
    sentences = [
        *own,
        f"{user} touched {plural(inc.count, 'file')} {where(inc)} between {iso(inc.first_seen)} and "
        f"{iso(inc.last_seen)} (peak {inc.peak_rate:.0f} files/s).",
        f"Rules fired: {fired}.",
        _kinds(inc),
        ("Content evidence: " + "; ".join(inc.why) + ".") if inc.why else "",
        _extensions(inc),
        inc.note,
        f"Last {HORIZONS_S[FEATURE_HORIZON] / 60:g} min of activity: {activity}." if activity else "",
        ("Unusual for this user: " + "; ".join(
            f"{a.feature} {a.observed:g} vs baseline {a.baseline:g} ({a.model}, deviation {a.deviation:g})"
            for a in anomalies) + ".") if anomalies else "",
        f"First files: {shown}" + (f" (+{rest} more)." if rest > 0 else "."),
        "Closed: quiet since the last event." if status == "closed" else "",
    ]
    evidences = [
        Evidence(kind="rule", name=n, value=float(h.observed), threshold=float(h.threshold), window_s=h.window_s,
                 rule_uid=rules[n].id if n in rules else "", level=h.level, first_seen=h.first_seen,
                 last_seen=h.last_seen)
        for n, h in inc.rules.items()
    ]
    evidences += [Evidence(kind="data", name=k, value=float(n)) for k, n in inc.kinds.items()]
    evidences += [Evidence(kind="feature", name=k, value=float(v), window_s=HORIZONS_S[FEATURE_HORIZON])
                  for k, v in active.items() if k in FEATURES]
    tags = sorted({t for n in inc.rules if n in rules for t in rules[n].tags})
    return Alert(
        uid=inc.uid,
        title=title,
        rule=name,
        rule_uid=rule.id,
        severity=severity,
        severity_id=severity.ocsf_id,
        user=user,
        first_seen=inc.first_seen,
        detected_at=inc.detected_at,
        signal=signals.get(name, name),
        observed=float(hit.observed),
        threshold=float(hit.threshold),
        window_s=float(hit.window_s),
        file_count=inc.count,
        paths=list(inc.paths),
        devices=list(inc.devices),
        shares=list(inc.shares),
        tags=tags,
        description=" ".join(" ".join(s for s in sentences if s).split()),
        version=inc.version,
        last_seen=inc.last_seen,
        status=status,
        drill=inc.drill,
        evidences=evidences,
        anomaly_analyses=list(anomalies),
    )
