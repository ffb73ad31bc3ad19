"""Burst detection shared by the counting rules: window count -> incident -> severity.

One ``KeyState`` per (rule, key). Each matching event is counted in a sliding window; when the
fullest window containing it reaches ``threshold`` an incident opens at the rule's level, and
when it reaches ``critical_at`` the same incident escalates to critical. Events keep joining the
open incident until ``cooldown_s`` of quiet; the next match after that closes it, and a new burst
must reach the threshold again on its own events.

Alerts are not built here: ``step`` only moves the incident's ``target`` severity, and the engine
turns "target above what was already emitted" into one alert per incident per batch.
"""
from __future__ import annotations

import uuid
from bisect import bisect_right

from dwcore.detectors import window
from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.state import Incident, Item, KeyState
from dwcore.schemas.alert import Severity

INCIDENT_NAMESPACE = uuid.UUID("1045fa8b-dfa5-569b-9d58-001af279bb54")
MAX_EXTS = 8  # distinct new extensions counted per incident; the rest go to "other"
MAX_PLACES = 16  # distinct devices/shares listed per incident
OTHER_EXT = "other"


def incident_uid(user: str, rule: str, key: str, first_seen: int) -> str:
    """Deterministic, so a replayed batch or a restarted worker names the incident the same."""
    return str(uuid.uuid5(INCIDENT_NAMESPACE, f"{user}\x1f{rule}\x1f{key}\x1f{first_seen}"))


def rank(severity: str) -> int:
    return Severity(severity).rank if severity else 0


def _add_place(places: list[str], value: str) -> None:
    if value and value not in places and len(places) < MAX_PLACES:
        places.append(value)


def _add_evidence(inc: Incident, item: Item, sample: int) -> None:
    inc.count += 1
    if len(inc.paths) < sample:
        inc.paths.append(item.path)
    _add_place(inc.devices, item.device)
    _add_place(inc.shares, item.share)
    if item.new_ext is not None:
        inc.ext_changed += 1
        ext = item.new_ext or "(none)"
        if ext in inc.exts or len(inc.exts) < MAX_EXTS:
            inc.exts[ext] = inc.exts.get(ext, 0) + 1
        else:
            inc.exts[OTHER_EXT] = inc.exts.get(OTHER_EXT, 0) + 1
    if item.note and not inc.note:
        inc.note = item.note


def _severity_for(count: int, rule: RulePolicy) -> Severity | None:
    if rule.critical_at is not None and count >= rule.critical_at:
        return Severity.CRITICAL
    if count >= rule.threshold:
        return rule.level
    return None


def _open(ks: KeyState, item: Item, count: int, end: int, rule: RulePolicy, user: str, key: str) -> None:
    # The incident's evidence is the window that crossed plus anything later (late arrivals).
    members = [it for it in ks.pending if it.time > end - rule.window_ms]
    # From the times, not the evidence: a late arrival may have pushed the oldest item out.
    first_seen = ks.times[bisect_right(ks.times, end - rule.window_ms)]
    target = _severity_for(count, rule) or rule.level
    inc = Incident(
        uid=incident_uid(user, rule.name, key, first_seen),
        first_seen=first_seen,
        last_seen=max([item.time, end, *(it.time for it in members)]),
        count=0,
        detected_at=item.time,
        observed=count,
        target=target.value,
        paths=[],
        devices=[],
        shares=[],
        exts={},
    )
    for it in members:
        _add_evidence(inc, it, rule.sample_paths)
    inc.count = max(inc.count, count)
    ks.incident = inc
    ks.pending = []


def step(ks: KeyState, item: Item, rule: RulePolicy, user: str, key: str) -> Incident | None:
    """Count one matching event. Returns an incident this event closed (cooldown passed), if any."""
    closed = None
    inc = ks.incident
    if inc is not None and item.time > inc.last_seen + rule.cooldown_ms:
        closed, ks.incident = inc, None
        # The closed burst's events must not count toward the next one.
        window.trim(ks.times, inc.last_seen, rule.cap)
        ks.pending = []
    t = item.time
    ks.max_time = max(ks.max_time, t)
    window.insert(ks.times, t)
    # Keep two windows of history so an event up to window_s late still meets its burst.
    keep_after = ks.max_time - 2 * rule.window_ms
    window.trim(ks.times, keep_after, rule.cap)
    count, end = window.max_count_containing(ks.times, t, rule.window_ms)

    inc = ks.incident
    if inc is None:
        _insert_item(ks.pending, item)
        drop = 0
        while drop < len(ks.pending) and ks.pending[drop].time <= keep_after:
            drop += 1
        # In order, the window that crosses holds exactly the newest `threshold` matches, so older
        # evidence is never needed; a late burst may lose some paths but its count stays exact.
        del ks.pending[: max(drop, len(ks.pending) - rule.threshold)]
        if count >= rule.threshold:
            _open(ks, item, count, end, rule, user, key)
        return closed

    _add_evidence(inc, item, rule.sample_paths)
    inc.first_seen = min(inc.first_seen, t)
    inc.last_seen = max(inc.last_seen, t)
    reached = _severity_for(count, rule)
    if reached is not None and reached.rank > rank(inc.target):
        inc.target, inc.detected_at, inc.observed = reached.value, t, count
    return closed


def _insert_item(items: list[Item], item: Item) -> None:
    if not items or item.time >= items[-1].time:
        items.append(item)
        return
    i = len(items)
    while i > 0 and items[i - 1].time > item.time:
        i -= 1
    items.insert(i, item)


def needs_alert(inc: Incident) -> bool:
    return rank(inc.target) > rank(inc.emitted)
