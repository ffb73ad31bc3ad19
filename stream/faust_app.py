"""The distributed mode's stream processing: a faust-streaming app.

One processor consumes the events topic in batches (take_events: 300-500 msg/s is what faust
users report one event at a time; batching is how we go past it), dead-letters what does not
validate, and runs the detectors per user against a changelog-backed table, so a user's state
survives a worker restart or a rebalance. Events are keyed by user, so one worker holds each
user's whole state.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import faust
from faust.types import TP

from dwcore.detectors.baseline import Scorer
from dwcore.detectors.engine import has_open_incident, tick
from dwcore.detectors.policy import Policy
from dwcore.logfmt import kv
from dwcore.metrics import BATCH_ROWS, CONSUMER_LAG, DEADLETTERS, EVENTS_RECEIVED, deadletter_reason
from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import encode
from dwcore.schemas.topics import Topics
from dwcore.stream.faust_delivery import DirectDeliveryTransport
from dwcore.stream.processing import (
    RawMessage,
    decode_batch,
    fold_user,
    group_by_user,
    log_alerts,
    prepare,
    quiet_clock,
)
from dwcore.stream.user_states import UserStates

log = logging.getLogger(__name__)

BATCH_MAX = 2_000
BATCH_WITHIN_S = 0.1
CLOSE_EVERY_S = 5.0  # how often quiet incidents get their closing version
STATE_WRITE_EVERY_S = 1.0  # how long a user's state may wait for its changelog write (see UserStates)

# The source partition of the user whose state is being written (see PinnedTable).
_source_partition: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "source_partition", default=None
)


class PinnedTable(faust.Table):
    """A table whose changelog partition is the source partition of the events being processed.

    faust finds that partition from "the current event", which batch processing (take_events) does
    not set. Pinning it explicitly keeps the table co-partitioned with the events topic whatever
    partitioner the producer used, so recovery after a rebalance lands on the right worker.
    """

    def partition_for_key(self, key: Any) -> int | None:
        partition = _source_partition.get()
        if partition is None:
            raise RuntimeError("user state written outside a pinned batch")
        return partition


class WorkerApp(faust.App):
    """faust's app, with two changes: its consumer hands messages to the stream directly (see
    faust_delivery), and ``before_wait_empty`` runs before faust waits for every event taken to be
    acknowledged (on shutdown and when partitions are revoked). The worker releases events only
    after writing the states that count them (see UserStates), so it must write them there, or
    faust would wait for ever."""

    before_wait_empty: Callable[[], Awaitable[None]] | None = None

    def _new_transport(self) -> Any:
        # The stock consumer, with the per-message hand-off made direct (see faust_delivery).
        return DirectDeliveryTransport(self.conf.broker_consumer, self)

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        if self.before_wait_empty is not None:
            await self.before_wait_empty()
        await super()._consumer_wait_empty(consumer, logger)


class Counters:
    def __init__(self) -> None:
        self.received = 0
        self.deadlettered = 0
        self.alerts = 0
        self.batches = 0
        self._last_log = time.monotonic()

    def maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= 10:
            self._last_log = now
            log.info("worker_counters %s", kv(received=self.received, deadlettered=self.deadlettered,
                                              alerts=self.alerts, batches=self.batches))


_LAG: dict[Any, int] = {}  # partition -> messages behind its end, as of its latest batch


def _lag(app: Any, msgs: list[Any]) -> None:
    """dataward_consumer_lag_messages of the events topic: each partition's end minus the last
    offset taken from it, summed over the partitions this worker has seen."""
    last = {msg.tp: msg for msg in msgs}
    try:
        for tp, msg in last.items():
            high = app.consumer.highwater(tp)
            if high is not None:
                _LAG[tp] = max(0, int(high) - int(msg.offset) - 1)
    except Exception:  # a metric must never stop detection
        return
    for topic in {tp.topic for tp in last}:
        CONSUMER_LAG.labels(topic).set(sum(n for tp, n in _LAG.items() if tp.topic == topic))


async def _send_acked(topic: Any, alerts: list[Alert]) -> None:
    """Send the alerts and wait until the broker has acknowledged every one."""
    pending = [await topic.send(key=alert.user.encode(), value=encode(alert)) for alert in alerts]
    for fut in pending:
        await fut


def _source_of(batch: list[Any], index: int) -> str:
    msg = batch[index].message
    return f"{msg.topic}:{msg.partition}:{msg.offset}"


def _write_state(state: Any, user: str, partition: int, value: bytes) -> None:
    token = _source_partition.set(partition)
    try:
        state[user] = value
    finally:
        _source_partition.reset(token)


def build_app(
    policy: Policy,
    topics: Topics,
    *,
    bootstrap: str,
    partitions: int,
    app_id: str,
    datadir: str,
    ready: Callable[[], None] | None = None,
    settings: Mapping[str, Any] | None = None,
    scorer: Scorer | None = None,
) -> faust.App:
    """The worker app. ``datadir`` is where faust keeps its local files (never the checkout);
    ``settings`` are extra faust settings from the wiring (e.g. broker credentials)."""
    prepare(policy)
    app = WorkerApp(
        app_id,
        broker=f"kafka://{bootstrap}",
        datadir=datadir,
        store="memory://",  # the changelog topic is the durable copy; recovery replays it
        topic_partitions=partitions,
        web_enabled=False,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=30.0,
        broker_commit_every=BATCH_MAX,
        broker_commit_interval=1.0,
        **dict(settings or {}),
    )
    events_topic = app.topic(topics.events, key_serializer="raw", value_serializer="raw")
    alerts_topic = app.topic(topics.alerts, key_serializer="raw", value_serializer="raw")
    deadletter_topic = app.topic(topics.deadletter, key_serializer="raw", value_serializer="raw")
    state = PinnedTable(
        app,
        name="user-state",
        default=None,
        key_type=str,
        partitions=partitions,
    )
    # Keys stay JSON (they come back as str on recovery); values are the detectors' own encoding.
    state.value_serializer = "raw"
    app.tables.add(state)
    counters = Counters()
    users = UserStates(state, lambda user, partition, value: _write_state(state, user, partition, value),
                       STATE_WRITE_EVERY_S)
    # The batch body and the timers take turns: a state is never written, nor an event released,
    # while a batch has it in hand (e.g. waiting for the broker to acknowledge an alert).
    turn = asyncio.Lock()

    async def write_all() -> None:
        # From here until the partitions are assigned again, every batch writes at once.
        users.every_s = 0.0
        async with turn:
            users.flush()

    app.before_wait_empty = write_all
    announced = False
    watching: dict[str, int] = {}  # user -> source partition, while they may have an open incident
    newest: dict[int, int] = {}  # source partition -> the newest event time processed from it

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # faust's stub wants a signal kwarg
    async def _on_rebalance_complete(sender: Any, **_kwargs: Any) -> None:
        # Assigned and state recovered: from now on events are processed.
        nonlocal announced
        # Users whose partition moved away, or whose state was recovered afresh, are decoded again.
        users.every_s = STATE_WRITE_EVERY_S
        dropped = users.prune()
        log.info("worker_assigned %s", kv(partitions=len(app.assignor.assigned_actives()), states_dropped=dropped))
        if ready and not announced:
            announced = True
            ready()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _on_partitions_revoked(sender: Any, revoked: Any, **_kwargs: Any) -> None:
        # Unwritten states of partitions moving away are not ours to write any more; their events
        # were never released, so the next owner replays them against the changelog's state.
        lost = {tp.partition for tp in revoked if tp.topic == topics.events}
        async with turn:  # not while the close tick is half way through these users
            dropped = users.drop_partitions(lost)
            # Their incidents are the next owner's to close: closing them here, from a state that
            # stopped at the last event this worker read, cut an attack short (a takeover test saw
            # an incident closed at 102 of its 300 renames while the new owner was still counting).
            for user in [u for u, p in watching.items() if p in lost]:
                del watching[user]
            for partition in lost:
                newest.pop(partition, None)
                _LAG.pop(TP(topics.events, partition), None)
        if dropped:
            log.info("states_unwritten_on_revoke %s", kv(users=dropped, partitions=len(lost)))

    @app.agent(events_topic, name="detect")
    async def detect_processor(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):  # type: ignore[attr-defined]
            counters.batches += 1
            counters.received += len(batch)
            EVENTS_RECEIVED.inc(len(batch))
            BATCH_ROWS.labels("detect").observe(len(batch))
            _lag(app, [ev.message for ev in batch])
            partition_of: dict[str, int] = {}
            offsets_of: dict[str, list[int]] = {}
            raw = [RawMessage(ev.message.key, ev.message.value, "") for ev in batch]
            decoded = decode_batch(raw, int(time.time() * 1000), partial(_source_of, batch))
            for dl in decoded.deadletters:
                counters.deadlettered += 1
                DEADLETTERS.labels(deadletter_reason(dl.reason)).inc()
                log.warning("deadletter %s", kv(source=dl.source, reason=dl.reason[:300]))
                await deadletter_topic.send(key=dl.key, value=encode(dl))
            # A user's events come from one partition (keyed by user); remember which.
            for ev, origin in zip(decoded.events, decoded.origins, strict=True):
                source = batch[origin].message.partition
                partition_of.setdefault(ev.user_name, source)
                offsets_of.setdefault(ev.user_name, []).append(batch[origin].message.offset)
                if ev.time > newest.get(source, -1):
                    newest[source] = ev.time
            async with turn:
                for user, user_events in group_by_user(decoded.events).items():
                    partition = partition_of.get(user, 0)
                    current, done = users.take(user)
                    new_state, last, alerts = fold_user(current, done, user, user_events, policy,
                                                        offsets_of[user], scorer)
                    if new_state is None:  # every event was a replay
                        users.put_back(user, current, done)
                        continue
                    if alerts:
                        # The alerts reach the broker before the state that raised them is written; a
                        # crash in between replays the events (not committed) and raises them again.
                        await _send_acked(alerts_topic, alerts)
                        counters.alerts += len(alerts)
                        users.write(user, partition, new_state, last)
                        log_alerts(alerts)
                    else:
                        users.stage(user, partition, new_state, last)
                    watching[user] = partition
                # Acknowledged by the stream after this body; committable once their states are written.
                users.hold(batch, time.monotonic())
                if users.due(time.monotonic()):
                    users.flush()
            counters.maybe_log()

    @app.timer(STATE_WRITE_EVERY_S)
    async def write_states() -> None:
        # A quiet stream (or a rebalance waiting for every event to be acknowledged) still gets its
        # states written and its offsets committed.
        async with turn:
            if users.due(time.monotonic()):
                users.flush()

    @app.timer(CLOSE_EVERY_S)
    async def close_quiet_incidents() -> None:
        # Users this worker saw events for (after a restart: from their next event on).
        wall = int(time.time() * 1000)
        async with turn:
            for user, partition in list(watching.items()):
                current, done = users.peek(user)
                if current is None or not has_open_incident(current):
                    watching.pop(user, None)
                    continue
                # Unknown (no end offset seen for it yet) counts as behind: never close early.
                behind = _LAG.get(TP(topics.events, partition)) != 0
                now = quiet_clock(wall, behind, newest.get(partition))
                new_state, alerts = tick(current, user, now, policy)  # a copy: current is unchanged
                if alerts:
                    await _send_acked(alerts_topic, alerts)
                    counters.alerts += len(alerts)
                    users.write(user, partition, new_state, done)
                    log_alerts(alerts)
                if not has_open_incident(new_state):
                    watching.pop(user, None)

    return app
