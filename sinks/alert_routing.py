"""Destinations as plain values, and which alerts go where.

A destination receives an alert when every filter it sets matches: severity at least
``min_severity``; ``rules``, ``users``, ``tags``: any listed value; ``user_groups``: the user is a
member of any listed group (system groups by default, injectable). Empty filters match all.
"""
from __future__ import annotations

import grp
import logging
import pwd
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from dwcore.schemas.alert import Alert, Severity

log = logging.getLogger(__name__)

# Documented limits: Slack ~1 message/s per webhook, PagerDuty ~120 events/min per routing key.
DEFAULT_RATE_PER_MINUTE = {"slack": 60.0, "teams": 60.0, "pagerduty": 120.0, "webhook": 0.0}


@dataclass(frozen=True)
class Destination:
    name: str
    kind: str  # webhook | slack | teams | pagerduty
    url: str = field(repr=False)  # Slack/Teams URLs are credentials: never logged
    secret: str = field(default="", repr=False)  # webhook: whsec_ signing secret; pagerduty: routing key
    min_severity: str = "low"
    rules: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    user_groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    rate_per_minute: float = 0.0  # 0: unlimited
    timeout_s: float = 10.0


@lru_cache(maxsize=4096)
def system_groups(user: str) -> frozenset[str]:
    """The user's groups from the system databases (primary and supplementary); empty if unknown."""
    names = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    try:
        names.add(grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name)
    except KeyError:
        pass
    return frozenset(names)


def matches(dest: Destination, alert: Alert, groups_of: Callable[[str], frozenset[str]] = system_groups) -> bool:
    if Severity(alert.severity).rank < Severity(dest.min_severity).rank:
        return False
    if dest.rules and alert.rule not in dest.rules:
        return False
    if dest.users and alert.user not in dest.users:
        return False
    if dest.tags and not set(dest.tags) & set(alert.tags):
        return False
    if dest.user_groups and not set(dest.user_groups) & groups_of(alert.user):
        return False
    return True


def route(
    destinations: Sequence[Destination],
    alerts: Sequence[Alert],
    groups_of: Callable[[str], frozenset[str]] = system_groups,
) -> dict[str, list[Alert]]:
    """Destination name -> its alerts, in order (drills included: the caller decides)."""
    out: dict[str, list[Alert]] = {}
    for dest in destinations:
        picked = [a for a in alerts if matches(dest, a, groups_of)]
        if picked:
            out[dest.name] = picked
    return out
