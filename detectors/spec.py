"""What a counting rule plugs into the engine: which events it counts, under which incident key,
what evidence each keeps, and how its incident reads as an alert."""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from detectors.policy import RulePolicy
from detectors.state import Incident, Item
from schemas.alert import Alert
from schemas.event import AccessEvent


class RuleSpec(NamedTuple):
    name: str  # equals RulePolicy.name
    key: Callable[[AccessEvent], str | None]  # incident key, or None when the event does not count
    item: Callable[[AccessEvent], Item]
    alert: Callable[[Incident, RulePolicy, str, str], Alert]  # (incident, rule, user, key)
