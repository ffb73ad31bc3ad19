"""The distributed-mode sink: Kafka events, alerts and dead letters into ClickHouse, at least once.

Per (topic, partition) of each consumed batch: decode, insert with the dedup token
``topic:partition:first-last``, and only then commit the offsets synchronously. A crash between
insert and commit replays the batch; when the replay has the same boundaries the engine drops it
by its token. A message that cannot be decoded, and a batch the store refuses for good, go to the
dead-letter table with the reason, never nowhere. A retriable store failure retries the same batch
with backoff and commits nothing. The process wiring (consumer loop, query endpoint) is in
``dataward.distributed``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from dwcore.backoff import Backoff
from dwcore.logfmt import kv
from dwcore.schemas.codec import DecodeError, decode_alert, decode_deadletter, decode_event
from dwcore.schemas.ddl import ALERTS_TABLE, DEADLETTER_TABLE, EVENTS_TABLE
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.topics import Topics
from dwcore.sinks.errors import StoreFailure, StoreUnavailable
from dwcore.sinks.jsonl import AlertJsonlWriter
from dwcore.sinks.store_writer import StoreWriter

log = logging.getLogger(__name__)

CONSUME_BATCH = 10_000
CONSUME_TIMEOUT_S = 0.5
STATS_INTERVAL_S = 10.0


class SinkCounters(msgspec.Struct):
    received: int = 0
    inserted: dict[str, int] = msgspec.field(default_factory=dict)  # rows per table
    deadlettered: int = 0  # of which: failed to decode here, or refused by the store
    commits: int = 0
    retries: int = 0
    errors: int = 0

    def inserted_into(self, table: str) -> int:
        return self.inserted.get(table, 0)

    def line(self) -> str:
        fields: dict[str, int] = {"received": self.received}
        fields.update({f"inserted_{table}": n for table, n in sorted(self.inserted.items())})
        fields.update(deadlettered=self.deadlettered, commits=self.commits, retries=self.retries, errors=self.errors)
        return kv(**fields)


class Route(NamedTuple):
    """What the sink does with one topic: how to decode a message, which table takes it."""

    table: str
    decode: Callable[[bytes], Any]
    insert: Callable[..., int]  # (records, dedup_token=...) -> rows inserted
    on_stored: Callable[[list[Any]], None] | None = None  # after the insert, before the commit


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _deadletter(msg: Message, reason: str, now_ms: int) -> DeadLetter:
    return DeadLetter(
        raw=msg.value() or b"",
        key=msg.key(),
        reason=reason,
        source=f"{msg.topic()}:{msg.partition()}:{msg.offset()}",
        time=now_ms,
    )


def decode_group(route: Route, msgs: Sequence[Message], now_ms: int) -> tuple[list[Any], list[DeadLetter]]:
    """Decode one partition's messages: (good records, dead letters for the bad ones)."""
    good: list[Any] = []
    bad: list[DeadLetter] = []
    for msg in msgs:
        raw = msg.value()
        if raw is None:
            bad.append(_deadletter(msg, "empty message (tombstone)", now_ms))
            continue
        try:
            good.append(route.decode(raw))
        except DecodeError as exc:
            bad.append(_deadletter(msg, f"sink decode: {exc}", now_ms))
    return good, bad


class ClickHouseSink:
    """The loop body, apart from the process wiring so tests can drive one batch at a time."""

    def __init__(
        self,
        writer: StoreWriter,
        topics: Topics,
        consumer: Consumer,
        stop: threading.Event,
        alert_writer: AlertJsonlWriter | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.writer = writer
        self.consumer = consumer
        self.stop = stop
        self.counters = SinkCounters()
        self.backoff = backoff or Backoff(0.2, 30.0)
        self.routes: dict[str, Route] = {
            topics.events: Route(EVENTS_TABLE, decode_event, writer.insert_events),
            topics.alerts: Route(ALERTS_TABLE, decode_alert, writer.insert_alerts,
                                 alert_writer.write_many if alert_writer is not None else None),
            topics.deadletter: Route(DEADLETTER_TABLE, decode_deadletter, writer.insert_deadletters),
        }

    def _with_retry(self, what: str, fn: Callable[[], int]) -> int | None:
        """Run fn until it succeeds; None if stopped while the store stays unavailable."""
        while True:
            try:
                done = fn()
            except StoreUnavailable as exc:
                self.counters.retries += 1
                delay = self.backoff.next()
                log.warning("insert_retry %s", kv(what=what, backoff_s=f"{delay:.2f}", error=exc))
                if self.stop.wait(delay):
                    return None
                continue
            self.backoff.reset()
            return done

    def handle_group(self, msgs: Sequence[Message]) -> bool:
        """Insert one partition's slice then commit it. False if stopped before it was stored."""
        topic, partition = msgs[0].topic(), msgs[0].partition()
        first, last = msgs[0].offset(), msgs[-1].offset()
        token = f"{topic}:{partition}:{first}-{last}"
        route = self.routes[topic]
        good, bad = decode_group(route, msgs, _now_ms())
        if good:
            try:
                done = self._with_retry(token, lambda: route.insert(good, dedup_token=token))
            except StoreFailure as exc:
                # Permanent: the store refuses these rows (e.g. a value out of a column's range).
                # Keep them whole in the dead-letter table rather than block the partition.
                self.counters.errors += 1
                log.error("insert_refused %s", kv(token=token, rows=len(good), error=exc))
                now = _now_ms()
                bad = [_deadletter(m, f"store refused batch: {exc}", now) for m in msgs]
                good, done = [], 0
            if done is None:
                return False
            self.counters.inserted[route.table] = self.counters.inserted_into(route.table) + done
            if route.on_stored is not None and good:
                # After the insert, before the commit: a replay may repeat a line (same uid), never skip one.
                route.on_stored(good)
        if bad:
            # Own token: for the dead-letter topic the good rows went to the same table above.
            bad_token = f"{token}:bad"
            done = self._with_retry(bad_token, lambda: self.writer.insert_deadletters(bad, dedup_token=bad_token))
            if done is None:
                return False
            self.counters.deadlettered += len(bad)
            self.counters.inserted[DEADLETTER_TABLE] = self.counters.inserted_into(DEADLETTER_TABLE) + len(bad)
        self.consumer.commit(offsets=[TopicPartition(topic, partition, last + 1)], asynchronous=False)
        self.counters.commits += 1
        return True

    def handle_batch(self, msgs: Sequence[Message]) -> None:
        groups: dict[tuple[str, int], list[Message]] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                self.counters.errors += 1
                log.warning("consume_error %s", kv(error=err))
                continue
            groups.setdefault((msg.topic(), msg.partition()), []).append(msg)
            self.counters.received += 1
        for group in groups.values():
            if not self.handle_group(group):
                return


def consumer_config(client_config: Mapping[str, str], group_id: str) -> dict[str, Any]:
    """librdkafka consumer settings: manual, synchronous commits after the insert."""
    return {
        **client_config,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
    }


def run_sink_loop(
    sink: ClickHouseSink, consumer: Consumer, stop: threading.Event, on_first_poll: Callable[[], None]
) -> SinkCounters:
    """Consume and store until ``stop`` is set; logs counters every STATS_INTERVAL_S."""
    next_stats = time.monotonic() + STATS_INTERVAL_S
    while not stop.is_set():
        msgs = consumer.consume(num_messages=CONSUME_BATCH, timeout=CONSUME_TIMEOUT_S)
        on_first_poll()  # after the first poll even if no assignment came (more sinks than partitions)
        if msgs:
            sink.handle_batch(msgs)
        if time.monotonic() >= next_stats:
            log.info("sink_stats %s", sink.counters.line())
            next_stats = time.monotonic() + STATS_INTERVAL_S
    log.info("sink_stopped %s", sink.counters.line())
    return sink.counters
