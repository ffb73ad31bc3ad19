"""Incidents: a user's findings within a horizon, as one alert that grows in versions.

An incident opens when a rule first crosses its threshold and collects every later matching event
of the same key (files, devices, shares, bytes, what kind of data was hit). It gets a new alert
version when it grows: higher severity, another rule, another device or share, or ``growth`` times
the files of the last version; and a closing version when every fired rule's cooldown has passed
without a match. Severity: the highest level any fired rule reached; critical also when rules of
two independent families fired (content changes and renames, say). A rule counting only learned
anomaly scores never makes an incident critical on its own.
"""
from __future__ import annotations

import uuid

from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.state import Incident, Item, RuleHit
from dwcore.schemas.alert import Severity

INCIDENT_NAMESPACE = uuid.UUID("1045fa8b-dfa5-569b-9d58-001af279bb54")
MAX_EXTS = 8  # distinct new extensions counted per incident; the rest go to "other"
MAX_PLACES = 16  # distinct devices/shares listed per incident
MAX_WHY = 3
OTHER_EXT = "other"
# Rules of one family say the same thing twice; two families are independent evidence.
FAMILY = {
    "entropy_burst": "content", "partial_encryption": "content", "copy_encrypt_delete": "content",
    "slow_attack": "slow", "mass_rename": "names", "known_extension": "names",
    "extension_storm": "names", "ransom_note": "notes", "bulk_delete": "deletes",
    "canary_touch": "canary", "behaviour_anomaly": "anomaly", "agent_alarm": "alarm",
}
# "slow" sums the other families' destructive changes: it corroborates nothing on its own.
NOT_CORROBORATING = {"anomaly", "alarm", "slow"}
ANOMALY_SIGNALS = {"anomalous_minutes"}


def incident_uid(user: str, key: str, first_seen: int) -> str:
    """Deterministic, so a replayed batch or a restarted worker names the incident the same."""
    return str(uuid.uuid5(INCIDENT_NAMESPACE, f"{user}\x1f{key}\x1f{first_seen}"))


def rank(severity: str) -> int:
    return Severity(severity).rank if severity else 0


def reached(count: int, rule: RulePolicy) -> Severity | None:
    if rule.critical_at is not None and count >= rule.critical_at:
        return Severity.CRITICAL
    if count >= rule.threshold:
        return rule.level
    return None


def open_incident(user: str, key: str, first_seen: int, t: int) -> Incident:
    return Incident(uid=incident_uid(user, key, first_seen), first_seen=first_seen, last_seen=t,
                    detected_at=t, target="", quiet_ms=0)


def add_evidence(inc: Incident, item: Item, sample: int) -> None:
    inc.count += 1
    inc.first_seen = min(inc.first_seen, item.time)
    inc.last_seen = max(inc.last_seen, item.time)
    if len(inc.paths) < sample:
        inc.paths.append(item.path)
    for places, value in ((inc.devices, item.device), (inc.shares, item.share)):
        if value and value not in places and len(places) < MAX_PLACES:
            places.append(value)
    if item.new_ext is not None:
        inc.ext_changed += 1
        ext = item.new_ext or "(none)"
        slot = ext if ext in inc.exts or len(inc.exts) < MAX_EXTS else OTHER_EXT
        inc.exts[slot] = inc.exts.get(slot, 0) + 1
    if item.kind:
        inc.kinds[item.kind] = inc.kinds.get(item.kind, 0) + 1
    inc.kib += item.kib
    if item.why and len(inc.why) < MAX_WHY:
        inc.why.append(f"{item.path} ({item.why})")
    if item.note and not inc.note:
        inc.note = item.note


def record_hit(inc: Incident, rule: RulePolicy, signal: str, count: int, t: int, first: int,
               rate: float = 0.0) -> None:
    """The rule matched with ``count`` in its fullest window: update its peak and the severity."""
    hit = inc.rules.get(rule.name)
    level = reached(count, rule)
    if hit is None:
        if level is None:
            return
        # S3 rules count overlapping views of the same calls (a delete marker is also a delete).
        family = ("anomaly" if signal in ANOMALY_SIGNALS else "s3" if rule.name.startswith("s3_")
                  else FAMILY.get(rule.name, rule.name))
        hit = inc.rules[rule.name] = RuleHit(level=level.value, observed=count, threshold=rule.threshold,
                                             window_s=rule.window_s, first_seen=first, last_seen=t,
                                             family=family)
        inc.quiet_ms = max(inc.quiet_ms, rule.cooldown_ms)
    hit.count += 1
    hit.last_seen = max(hit.last_seen, t)
    hit.observed = max(hit.observed, count)
    if level is not None and level.rank > rank(hit.level):
        hit.level = level.value
        hit.threshold = rule.critical_at if level is Severity.CRITICAL and rule.critical_at else rule.threshold
    inc.peak_rate = max(inc.peak_rate, rate)
    target = severity(inc)
    if rank(target) > rank(inc.target):
        inc.target, inc.detected_at = target, t


def severity(inc: Incident) -> str:
    best = max((rank(h.level), h.level) for h in inc.rules.values())[1]
    families = {h.family for h in inc.rules.values()} - NOT_CORROBORATING
    if len(families) >= 2 and rank(best) >= Severity.HIGH.rank:
        best = Severity.CRITICAL.value
    only_anomaly = all(h.family == "anomaly" for h in inc.rules.values())
    if only_anomaly and rank(best) > Severity.HIGH.rank:
        best = Severity.HIGH.value
    return best


def places(inc: Incident) -> int:
    return len(inc.devices) + len(inc.shares)


def needs_version(inc: Incident, growth: float) -> bool:
    if not inc.target:
        return False
    return (
        inc.version == 0
        or rank(inc.target) > rank(inc.emitted)
        or any(name not in inc.emitted_rules for name in inc.rules)
        or places(inc) > inc.emitted_places
        or inc.count >= inc.emitted_count * growth
    )


def mark_emitted(inc: Incident) -> None:
    inc.version += 1
    inc.emitted = inc.target
    inc.emitted_count = inc.count
    inc.emitted_rules = list(inc.rules)
    inc.emitted_places = places(inc)


def is_quiet(inc: Incident, now: int) -> bool:
    return now > inc.last_seen + inc.quiet_ms
