"""The per-batch core shared by the faust worker and the embedded mode.

decode -> group by user -> detectors.evaluate with that user's state -> alerts. State is kept as
bytes (msgspec) in whatever mapping the caller owns: a changelog-backed faust table in the
distributed mode, a dict in the embedded mode. Keeping this free of faust makes it testable and
lets both modes run the same code.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from dwcore.detectors.engine import evaluate
from dwcore.detectors.policy import Policy
from dwcore.detectors.state import StateError, decode_state, encode_state
from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import DecodeError, decode_event
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.event import AccessEvent

log = logging.getLogger(__name__)


class RawMessage(NamedTuple):
    key: bytes | None
    value: bytes | None
    source: str  # "topic:partition:offset" or "embedded"


@dataclass
class Decoded:
    events: list[AccessEvent] = field(default_factory=list)
    origins: list[int] = field(default_factory=list)  # index of the message each event came from
    deadletters: list[DeadLetter] = field(default_factory=list)


def decode_batch(messages: Iterable[RawMessage], now_ms: int) -> Decoded:
    """Validate every message; the bad ones become dead letters carrying the reason."""
    out = Decoded()
    for index, msg in enumerate(messages):
        if msg.value is None:
            reason = "empty message value (tombstone) on the events topic"
        else:
            try:
                out.events.append(decode_event(msg.value))
                out.origins.append(index)
                continue
            except DecodeError as exc:
                reason = str(exc)
        out.deadletters.append(
            DeadLetter(raw=msg.value or b"", key=msg.key, reason=reason, source=msg.source, time=now_ms)
        )
    return out


def group_by_user(events: Sequence[AccessEvent]) -> dict[str, list[AccessEvent]]:
    groups: dict[str, list[AccessEvent]] = {}
    for ev in events:
        groups.setdefault(ev.user_name, []).append(ev)
    return groups


def detect_user(
    state: MutableMapping[str, bytes], user: str, events: Sequence[AccessEvent], policy: Policy
) -> list[Alert]:
    """Run the detectors over one user's new events and write the user's state back."""
    raw = state.get(user)
    current = None
    if raw:
        try:
            current = decode_state(raw)
        except StateError as exc:
            # A corrupt or older-version entry must not stop detection for everyone: start this
            # user afresh (at worst one burst is counted from here on) and say so loudly.
            log.error("state_reset user=%s reason=%r", user, str(exc))
    new_state, alerts = evaluate(current, user, events, policy)
    state[user] = encode_state(new_state)
    for alert in alerts:
        # The one log line per alert, for both modes (detectors themselves do no I/O).
        log.warning("alert rule=%s severity=%s user=%s files=%d observed=%g uid=%s",
                    alert.rule, alert.severity, alert.user, alert.file_count, alert.observed, alert.uid)
    return alerts


def detect(state: MutableMapping[str, bytes], events: Sequence[AccessEvent], policy: Policy) -> list[Alert]:
    alerts: list[Alert] = []
    for user, user_events in group_by_user(events).items():
        alerts.extend(detect_user(state, user, user_events, policy))
    return alerts
