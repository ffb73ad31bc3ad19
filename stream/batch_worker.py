"""The distributed mode's stream worker: Kafka batches straight into the batch core.

Why not faust's stream: faust hands every message through its conductor, a channel queue, an
Event and an ack, with a task-creating wait per message. Measured on the build VM
(bench/worker.py), a faust processor that only counts the events got 2-6% of the rate of a bare
consumer loop, and the detecting processor under 1%. Here one librdkafka consumer fetches up to
``batch_max`` messages per call and the batch core (processing.py) runs once per batch.

Per batch, in this order (what makes a kill -9 at any point lose and duplicate nothing):
1. decode, dead-letter what does not validate, run the detectors per user (each user's events
   in partition order; a user's events all come from one partition, keyed by user);
2. alerts raised by the batch to the alerts topic, waiting for the broker's acknowledgement;
3. one state record per touched user to the changelog, plus the dead letters, acknowledged;
4. the source offsets committed.
A crash before 4 replays the batch: the state records carry the last offset folded in, so a
replayed event is skipped, and an alert is never forgotten because its state was written first.
A user's state lives in memory between batches (ChangelogState) and is recovered from the
changelog when a partition is assigned to this worker.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from dwcore.detectors.baseline import Scorer
from dwcore.detectors.policy import Policy
from dwcore.logfmt import kv
from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import encode
from dwcore.schemas.topics import Topics
from dwcore.stream.changelog import ChangelogState
from dwcore.stream.processing import RawMessage, close_quiet, decode_batch, detect_user, open_incident, prepare

log = logging.getLogger(__name__)

BATCH_MAX = 10_000
BATCH_WITHIN_S = 0.1
CLOSE_EVERY_S = 5.0  # how often quiet incidents get their closing version
COUNTERS_EVERY_S = 10.0


class DeliveryError(RuntimeError):
    """The broker did not acknowledge an alert or a dead letter: the batch must not be committed."""


@dataclass
class WorkerCounters:
    received: int = 0
    deadlettered: int = 0
    alerts: int = 0
    batches: int = 0
    state_writes: int = 0
    recovered: int = 0
    rebalances: int = 0


@dataclass(frozen=True)
class WorkerSettings:
    group: str  # the consumer group: one per deployment
    changelog: str  # the state topic, partitioned like the events topic
    client_id: str  # names this process in the group (kafka-consumer-groups --describe)
    session_timeout_s: float = 10.0
    batch_max: int = BATCH_MAX
    batch_within_s: float = BATCH_WITHIN_S
    close_every_s: float = CLOSE_EVERY_S


@dataclass
class _Batch:
    """A batch's events grouped by user, with where they came from."""

    events: dict[str, list] = field(default_factory=dict)
    offsets: dict[str, list[int]] = field(default_factory=dict)
    partition: dict[str, int] = field(default_factory=dict)
    commit: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read


class BatchWorker:
    def __init__(self, client: Mapping[str, str], topics: Topics, settings: WorkerSettings, policy: Policy,
                 scorer: Scorer | None = None) -> None:
        prepare(policy)
        self.topics = topics
        self.settings = settings
        self.policy = policy
        self.scorer = scorer
        self.counters = WorkerCounters()
        self._client = dict(client)
        self.state = ChangelogState(self._client, settings.changelog)
        self._producer: Producer | None = None
        self._failed: list[KafkaError] = []
        self._watching: dict[str, int] = {}  # user -> partition, while they may have an open incident
        self._assigned: set[int] = set()
        self._last_commit: dict[int, int] = {}
        self._consumer: Consumer | None = None
        self._ready: Callable[[], None] | None = None

    def producer_config(self) -> dict[str, str | int | bool]:
        # Idempotent and acks=all: a retried produce is never duplicated, an ack means every
        # in-sync replica has the record. A short linger lets one batch's records share requests.
        return {**self._client, "acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4"}

    def consumer_config(self) -> dict[str, str | int | bool]:
        s = self.settings
        return {**self._client, "group.id": s.group, "client.id": s.client_id,
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "session.timeout.ms": int(s.session_timeout_s * 1000),
                "heartbeat.interval.ms": max(100, int(s.session_timeout_s * 1000 / 5))}

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> WorkerCounters:
        """Consume until ``stop`` is set; ``ready`` is called once the first assignment's state
        is recovered. Raises when the broker refuses an alert or state record (the process
        should exit and be restarted: the uncommitted batch is replayed)."""
        s = self.settings
        self._ready = ready
        self._producer = self.state.producer = Producer(self.producer_config(),
                                                        logger=logging.getLogger("dwcore.stream.librdkafka"))
        self._consumer = consumer = Consumer(self.consumer_config(),
                                             logger=logging.getLogger("dwcore.stream.librdkafka"))
        consumer.subscribe([self.topics.events], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        log.info("worker_started %s", kv(group=s.group, topic=self.topics.events, changelog=s.changelog))
        next_close = time.monotonic() + s.close_every_s
        next_log = time.monotonic() + COUNTERS_EVERY_S
        try:
            while not stop.is_set():
                msgs = consumer.consume(s.batch_max, timeout=s.batch_within_s)
                if msgs:
                    self.process(msgs)
                now = time.monotonic()
                if now >= next_close:
                    next_close = now + s.close_every_s
                    self.close_quiet_incidents(int(time.time() * 1000))
                if now >= next_log:
                    next_log = now + COUNTERS_EVERY_S
                    self._log_counters()
        finally:
            self._flush()
            self._commit(asynchronous=False)
            consumer.close()
            self._prod.flush(10)
            self._log_counters()
        return self.counters

    def process(self, msgs: list[Message]) -> None:
        c = self.counters
        c.batches += 1
        batch = _Batch()
        raw: list[RawMessage] = []
        where: list[tuple[int, int]] = []
        topic = self.topics.events
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume_error %s", kv(error=err))
                continue
            # A consumed message always has both (only a produced one may not, before delivery).
            partition, offset = cast(int, msg.partition()), cast(int, msg.offset())
            raw.append(RawMessage(msg.key(), msg.value(), f"{topic}:{partition}:{offset}"))
            where.append((partition, offset))
            batch.commit[partition] = offset + 1
        c.received += len(raw)
        decoded = decode_batch(raw, now_ms=int(time.time() * 1000))
        for dl in decoded.deadletters:
            c.deadlettered += 1
            log.warning("deadletter %s", kv(source=dl.source, reason=dl.reason[:300]))
            self._produce(self.topics.deadletter, dl.key, encode(dl))
        for ev, origin in zip(decoded.events, decoded.origins, strict=True):
            user = ev.user_name
            partition, offset = where[origin]
            if user in batch.events:
                batch.events[user].append(ev)
                batch.offsets[user].append(offset)
            else:
                batch.events[user] = [ev]
                batch.offsets[user] = [offset]
                batch.partition[user] = partition
        # The detectors read and write a copy of the touched users' entries; it reaches the state
        # (and the changelog) only after the broker acknowledged the alerts the batch raised.
        values = self.state.values
        staged = {u: values[u] for u in batch.events if u in values}
        alerts: list[Alert] = []
        for user, events in batch.events.items():
            raised = detect_user(staged, user, events, self.policy, batch.offsets[user], self.scorer)
            if raised:
                alerts.extend(raised)
                # An incident opens or grows only with an alert: only such users need the timer.
                self._watching[user] = batch.partition[user]
        self._publish_alerts(alerts)
        for user, value in staged.items():
            if value is not values.get(user):
                self.state.write(user, value, batch.partition[user])
                c.state_writes += 1
        self._flush()
        self._last_commit.update(batch.commit)
        self._commit(asynchronous=True)

    def close_quiet_incidents(self, now_ms: int) -> None:
        """Closing versions for the watched users' incidents that went quiet."""
        if not self._watching:
            return
        values = self.state.values
        staged: dict[str, bytes] = {}
        alerts: list[Alert] = []
        done: list[str] = []
        for user in list(self._watching):
            view = {user: values[user]} if user in values else {}
            raised, still_open = close_quiet(view, user, now_ms, self.policy)
            if raised:
                alerts.extend(raised)
                staged[user] = view[user]
            if not still_open:
                done.append(user)
        self._publish_alerts(alerts)
        for user, value in staged.items():
            self.state.write(user, value, self._watching[user])
            self.counters.state_writes += 1
        for user in done:
            self._watching.pop(user, None)
        if staged:
            self._flush()

    # -- delivery -------------------------------------------------------------------------------

    @property
    def _prod(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("the worker is not running")
        return self._producer

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._prod.produce(topic, key=key, value=value, on_delivery=self._delivered)
                return
            except BufferError:
                self._prod.poll(0.05)

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(err)

    def _publish_alerts(self, alerts: list[Alert]) -> None:
        """Alerts durable before the state that raised them moves on (alerts are rare: one wait)."""
        if not alerts:
            return
        for alert in alerts:
            self._produce(self.topics.alerts, alert.user.encode(), encode(alert))
        self._flush()
        self.counters.alerts += len(alerts)

    def _flush(self) -> None:
        # In slices, so a stop signal is still seen while the broker is away (the records stay queued
        # until librdkafka's delivery timeout; then they fail and the batch is not committed).
        while self._prod.flush(1.0):
            pass
        if self._failed:
            err, self._failed = self._failed[0], []
            raise DeliveryError(f"record not acknowledged by the broker: {err}")
        self.state.raise_failed()

    def _commit(self, asynchronous: bool) -> None:
        if self._consumer is None or not self._last_commit:
            return
        offsets = [TopicPartition(self.topics.events, p, o) for p, o in self._last_commit.items()
                   if p in self._assigned]
        self._last_commit.clear()
        if not offsets:
            return
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # a lost commit only means a replay, which is skipped
            log.warning("commit_failed %s", kv(error=exc, partitions=len(offsets)))

    # -- rebalances -----------------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.counters.rebalances += 1
        partitions = sorted(tp.partition for tp in parts)
        self._assigned = set(partitions)
        self.state.keep_only(partitions)
        self.counters.recovered += self.state.recover(partitions)
        # Incidents left open by the previous owner still get their closing version.
        for user, raw in self.state.values.items():
            partition = self.state.partition_of(user)
            if user not in self._watching and partition is not None and open_incident(raw, user):
                self._watching[user] = partition
        log.info("worker_assigned %s", kv(partitions=len(partitions), users=len(self.state.values)))
        if self._ready is not None:
            ready, self._ready = self._ready, None
            ready()

    def _on_revoke(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Called between batches: the last batch's records are acknowledged; its commit may be in flight.
        self._commit(asynchronous=False)
        gone = {tp.partition for tp in parts}
        self._assigned -= gone
        for user in [u for u, p in self._watching.items() if p in gone]:
            del self._watching[user]
        log.info("partitions_revoked %s", kv(count=len(gone)))

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._last_commit.clear()  # no longer ours to commit
        self._on_revoke(consumer, parts)

    def _log_counters(self) -> None:
        c = self.counters
        log.info("worker_counters %s", kv(received=c.received, deadlettered=c.deadlettered, alerts=c.alerts,
                                          batches=c.batches, state_writes=c.state_writes, recovered=c.recovered,
                                          users=len(self.state.values)))
