"""What a counting rule plugs into the engine: which events it counts, under which incident key,
what evidence each keeps, and how its incident reads as an alert."""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.state import Incident, Item
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent


class RuleSpec(NamedTuple):
    name: str  # equals RulePolicy.name
    key: Callable[[AccessEvent], str | None]  # incident key, or None when the event does not count
    item: Callable[[AccessEvent], Item]
    alert: Callable[[Incident, RulePolicy, str, str], Alert]  # (incident, rule, user, key)
    # How many counts one event is worth (e.g. bytes read in units); None: one. Capped per event at
    # the rule's cap, beyond which more counts change nothing.
    weight: Callable[[AccessEvent], int] | None = None
