"""Turning an incident into an Alert that explains itself.

An analyst paged at night should read, without a query: which signal, how many in which window
against which threshold, since when, on which machines and files, and (for renames) what the new
extension was. Wording that depends on the rule lives in the rule module; this is the shared part.
"""
from __future__ import annotations

import math
from datetime import UTC, datetime

from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.state import Incident
from dwcore.schemas.alert import Alert, Severity

PATHS_IN_TEXT = 3  # paths quoted in the description; the full sample is in Alert.paths


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def seconds(value: float) -> str:
    """10.0 -> '10 s', 2.5 -> '2.5 s'."""
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


def crossing(inc: Incident, rule: RulePolicy, signal: str) -> str:
    """'100 renames within 10 s reached critical_at 100 (alert at 25)'."""
    severity = Severity(inc.target)
    limit = crossed_threshold(inc, rule)
    text = f"{inc.observed} {signal} within {seconds(rule.window_s)} "
    if severity is Severity.CRITICAL and rule.critical_at is not None:
        return text + f"reached the critical level of {limit} (alert at {rule.threshold})"
    extra = f", critical at {rule.critical_at}" if rule.critical_at is not None else ""
    return text + f"reached the threshold of {limit}{extra}"


def crossed_threshold(inc: Incident, rule: RulePolicy) -> int:
    if inc.target == Severity.CRITICAL.value and rule.critical_at is not None:
        return rule.critical_at
    return rule.threshold


def sample_text(inc: Incident) -> str:
    shown = ", ".join(inc.paths[:PATHS_IN_TEXT])
    more = inc.count - min(len(inc.paths), PATHS_IN_TEXT)
    return f"First files: {shown}" + (f" (+{more} more)" if more > 0 else "")


def build_alert(
    inc: Incident, rule: RulePolicy, user: str, signal: str, title: str, description: str
) -> Alert:
    severity = Severity(inc.target)
    return Alert(
        uid=inc.uid,
        title=title,
        rule=rule.name,
        rule_uid=rule.id,
        severity=severity,
        severity_id=severity.ocsf_id,
        user=user,
        first_seen=inc.first_seen,
        detected_at=inc.detected_at,
        signal=signal,
        observed=float(inc.observed),
        threshold=float(crossed_threshold(inc, rule)),
        window_s=float(rule.window_s),
        file_count=inc.count,
        paths=list(inc.paths),
        devices=list(inc.devices),
        shares=list(inc.shares),
        tags=list(rule.tags),
        description=description,
    )
