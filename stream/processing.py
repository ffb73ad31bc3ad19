"""The per-batch core shared by the faust worker and the embedded mode.

decode -> group by user -> detectors.evaluate with that user's state -> alerts. State is kept as
bytes (msgspec) in whatever mapping the caller owns: a changelog-backed faust table in the
distributed mode, a dict in the embedded mode. Keeping this free of faust makes it testable and
lets both modes run the same code.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from dwcore.detectors.baseline import Scorer
from dwcore.detectors.engine import evaluate, has_open_incident, tick, warm_up
from dwcore.detectors.policy import Policy
from dwcore.detectors.state import StateError, UserState, decode_state, encode_state
from dwcore.logfmt import kv
from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import DecodeError, decode_event
from dwcore.schemas.deadletter import DeadLetter, dead_letter
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


def decode_batch(messages: Iterable[RawMessage], now_ms: int,
                 source_of: Callable[[int], str] | None = None) -> Decoded:
    """Validate every message; the bad ones become dead letters carrying the reason. Their
    source is the message's own, or ``source_of(index)`` if given (so that a caller need not
    format one for each of the many good messages)."""
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
        source = source_of(index) if source_of is not None else msg.source
        out.deadletters.append(dead_letter(msg.value or b"", reason, source, now_ms, key=msg.key))
    return out


def group_by_user(events: Sequence[AccessEvent]) -> dict[str, list[AccessEvent]]:
    groups: dict[str, list[AccessEvent]] = {}
    for ev in events:
        groups.setdefault(ev.user_name, []).append(ev)
    return groups


class _Stored(msgspec.Struct, array_like=True):
    """A user's table entry: the detector state plus the last source offset folded into it."""

    offset: int
    state: bytes


_stored_encoder = msgspec.msgpack.Encoder()
_stored_decoder = msgspec.msgpack.Decoder(_Stored)


def load_stored(raw: bytes | None, user: str) -> tuple[UserState | None, int]:
    """A user's table entry decoded: their state and the last source offset folded into it."""
    if not raw:
        return None, -1
    try:
        stored = _stored_decoder.decode(raw)
        return decode_state(stored.state), stored.offset
    except (msgspec.DecodeError, msgspec.ValidationError, StateError) as exc:
        # A corrupt or older-version entry must not stop detection for everyone: start this
        # user afresh (at worst one burst is counted from here on) and say so loudly.
        log.error("state_reset %s", kv(user=user, reason=str(exc)))
        return None, -1


def log_alerts(alerts: Sequence[Alert]) -> None:
    from dwcore.metrics import ALERTS_RAISED

    ALERTS_RAISED.inc(len(alerts))
    for alert in alerts:
        # The one log line per alert, for both modes (detectors themselves do no I/O).
        log.warning("alert %s", kv(rule=alert.rule, severity=alert.severity, user=alert.user,
                                   files=alert.file_count, observed=alert.observed, version=alert.version,
                                   status=alert.status, uid=alert.uid))


# Makes a user's new alerts durable (outbox, topic) before the state that raised them is written.
AlertCommit = Callable[[list[Alert]], None]


def detect_user(
    state: MutableMapping[str, bytes],
    user: str,
    events: Sequence[AccessEvent],
    policy: Policy,
    offsets: Sequence[int] | None = None,
    scorer: Scorer | None = None,
    before_commit: AlertCommit | None = None,
) -> list[Alert]:
    """Run the detectors over one user's new events and write the user's state back.

    ``before_commit(alerts)`` runs before the state is written: it makes the alerts durable (the
    outbox). If it raises, the state is not written, so the alerts are not forgotten as "already
    raised"; the exception goes to the caller.

    ``offsets`` (the source offsets of ``events``, all from the user's one partition) make a replay
    idempotent: after a crash between the state write and the offset commit, events at or below
    the offset already folded into the state are skipped instead of counted twice.
    """
    current, done = load_stored(state.get(user), user)
    new_state, last, alerts = fold_user(current, done, user, events, policy, offsets, scorer)
    if new_state is None:  # every event was a replay: nothing changed
        return []
    if alerts and before_commit is not None:
        before_commit(alerts)
    state[user] = stored_state(new_state, last)
    log_alerts(alerts)
    return alerts


def fold_user(
    current: UserState | None,
    done: int,
    user: str,
    events: Sequence[AccessEvent],
    policy: Policy,
    offsets: Sequence[int] | None = None,
    scorer: Scorer | None = None,
) -> tuple[UserState | None, int, list[Alert]]:
    """Count the user's new events into ``current`` (taken over: changed in place) and return
    the new state, the last source offset folded in, and the alerts raised. Events at or below
    ``done`` are replays and skipped; if all are, the state is None (unchanged)."""
    last = done
    if offsets is not None:
        fresh = [ev for ev, off in zip(events, offsets, strict=True) if off > done]
        if len(fresh) < len(events):
            log.info("replay_skipped %s", kv(user=user, events=len(events) - len(fresh)))
        last = max([done, *offsets])
        events = fresh
        if not events:
            return None, done, []
    new_state, alerts = evaluate(current, user, events, policy, scorer, owned=True)
    return new_state, last, alerts


def stored_state(state: UserState, offset: int) -> bytes:
    """A user's table entry: their state and the last source offset folded into it."""
    return _stored_encoder.encode(_Stored(offset, encode_state(state)))


def close_quiet(state: MutableMapping[str, bytes], user: str, now_ms: int, policy: Policy,
                before_commit: AlertCommit | None = None) -> tuple[list[Alert], bool]:
    """Closing versions for ``user``'s incidents quiet at ``now_ms``; also whether any stay open."""
    current, done = load_stored(state.get(user), user)
    if current is None or not has_open_incident(current):
        return [], False
    new_state, alerts = tick(current, user, now_ms, policy)
    if alerts:
        if before_commit is not None:
            before_commit(alerts)
        state[user] = stored_state(new_state, done)
        log_alerts(alerts)
    return alerts, has_open_incident(new_state)


def quiet_clock(wall_ms: int, behind: bool, newest_event_ms: int | None) -> int:
    """The time by which to judge an incident quiet when no event of its user arrives.

    The wall clock once every event taken has been processed; while a backlog is being worked
    through (after a takeover, an outage, a burst), the newest event time processed so far. By the
    clock, an attack whose last events are still waiting in the backlog looks quiet, and closing
    its incident then left those events out of it (seen as 299 of 300 renames after a takeover).
    """
    if not behind or newest_event_ms is None:
        return wall_ms
    return min(wall_ms, newest_event_ms)


def prepare(policy: Policy) -> None:
    """Call once at start: the name lists load and compile (~1 s) before the first event, not on it."""
    warm_up(policy)


def detect(state: MutableMapping[str, bytes], events: Sequence[AccessEvent], policy: Policy,
           scorer: Scorer | None = None, before_commit: AlertCommit | None = None) -> list[Alert]:
    alerts: list[Alert] = []
    for user, user_events in group_by_user(events).items():
        alerts.extend(detect_user(state, user, user_events, policy, scorer=scorer, before_commit=before_commit))
    return alerts
