"""The distributed-mode sink: Kafka events, alerts and dead letters into ClickHouse, at least once.

Per (topic, partition) of each consumed batch: decode, insert with the dedup token
``topic:partition:first-last``, and only then commit the offsets synchronously. A crash between
insert and commit replays the batch; when the replay has the same boundaries the engine drops it
by its token. A message that cannot be decoded goes to the dead-letter table with the reason,
never nowhere. A retriable store failure retries the same batch with backoff and commits nothing.
When the store is embedded chDB this process owns the directory, so it also serves the read-only
query endpoint and writes its address for ``dataward query``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from dataward.config import Config
from dwcore.schemas.codec import DecodeError, decode_alert, decode_deadletter, decode_event
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.topics import Topics
from dwcore.sinks.jsonl import AlertJsonlWriter
from dwcore.sinks.query_server import QueryServer
from dwcore.sinks.store import Store, StoreFailure, StoreUnavailable

log = logging.getLogger(__name__)

CONSUME_BATCH = 10_000
CONSUME_TIMEOUT_S = 0.5
STATS_INTERVAL_S = 10.0
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 30.0


class SinkCounters(msgspec.Struct):
    received: int = 0
    inserted_events: int = 0
    inserted_alerts: int = 0
    inserted_deadletters: int = 0
    deadlettered: int = 0  # of which: failed to decode here, or refused by the store
    commits: int = 0
    retries: int = 0
    errors: int = 0

    def line(self) -> str:
        return " ".join(f"{k}={getattr(self, k)}" for k in self.__struct_fields__)


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


def _decoder(topics: Topics, topic: str) -> tuple[str, Callable[[bytes], Any]]:
    if topic == topics.events:
        return "events", decode_event
    if topic == topics.alerts:
        return "alerts", decode_alert
    return "deadletters", decode_deadletter


def decode_group(
    topics: Topics, msgs: Sequence[Message], now_ms: int
) -> tuple[str, list[Any], list[DeadLetter]]:
    """Decode one partition's messages: (kind, good records, dead letters for the bad ones)."""
    kind, decode = _decoder(topics, msgs[0].topic())
    good: list[Any] = []
    bad: list[DeadLetter] = []
    for msg in msgs:
        raw = msg.value()
        if raw is None:
            bad.append(_deadletter(msg, "empty message (tombstone)", now_ms))
            continue
        try:
            good.append(decode(raw))
        except (DecodeError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            bad.append(_deadletter(msg, f"sink decode: {exc}", now_ms))
    return kind, good, bad


class ClickHouseSink:
    """The loop body, separate from run_clickhouse_sink so tests can drive one batch at a time."""

    def __init__(
        self,
        store: Store,
        topics: Topics,
        consumer: Consumer,
        stop: threading.Event,
        alert_writer: AlertJsonlWriter | None = None,
    ) -> None:
        self.store = store
        self.alert_writer = alert_writer
        self.topics = topics
        self.consumer = consumer
        self.stop = stop
        self.counters = SinkCounters()

    def _insert(self, kind: str, records: list[Any], token: str) -> int:
        if kind == "events":
            return self.store.insert_events(records, dedup_token=token)
        if kind == "alerts":
            return self.store.insert_alerts(records, dedup_token=token)
        return self.store.insert_deadletters(records, dedup_token=token)

    def _with_retry(self, what: str, fn: Callable[[], int]) -> int | None:
        """Run fn until it succeeds; None if stopped while the store stays unavailable."""
        backoff = 0.0
        while True:
            try:
                return fn()
            except StoreUnavailable as exc:
                self.counters.retries += 1
                backoff = min(RETRY_MAX_S, max(RETRY_INITIAL_S, backoff * 2))
                log.warning("insert_retry what=%s backoff_s=%.1f error=%s", what, backoff, exc)
                if self.stop.wait(backoff):
                    return None

    def handle_group(self, msgs: Sequence[Message]) -> bool:
        """Insert one partition's slice then commit it. False if stopped before it was stored."""
        topic, partition = msgs[0].topic(), msgs[0].partition()
        first, last = msgs[0].offset(), msgs[-1].offset()
        token = f"{topic}:{partition}:{first}-{last}"
        kind, good, bad = decode_group(self.topics, msgs, _now_ms())
        if good:
            try:
                done = self._with_retry(token, lambda: self._insert(kind, good, token))
            except StoreFailure as exc:
                # Permanent: the store refuses these rows (e.g. a value out of a column's range).
                # Keep them whole in the dead-letter table rather than block the partition.
                self.counters.errors += 1
                log.error("insert_refused token=%s rows=%d error=%s", token, len(good), exc)
                now = _now_ms()
                bad = [_deadletter(m, f"store refused batch: {exc}", now) for m in msgs]
                good, done = [], 0
            if done is None:
                return False
            setattr(self.counters, f"inserted_{kind}", getattr(self.counters, f"inserted_{kind}") + done)
            if kind == "alerts" and self.alert_writer is not None:
                # After the insert, before the commit: a replay may repeat a line (same uid), never skip one.
                self.alert_writer.write_many(good)
        if bad:
            # Own token: for the dead-letter topic the good rows went to the same table above.
            bad_token = f"{token}:bad"
            done = self._with_retry(bad_token, lambda: self.store.insert_deadletters(bad, dedup_token=bad_token))
            if done is None:
                return False
            self.counters.deadlettered += len(bad)
            self.counters.inserted_deadletters += len(bad)
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
                log.warning("consume_error error=%s", err)
                continue
            groups.setdefault((msg.topic(), msg.partition()), []).append(msg)
            self.counters.received += 1
        for group in groups.values():
            if not self.handle_group(group):
                return


def consumer_config(config: Config) -> dict[str, Any]:
    return {
        **config.kafka.client_config(),
        "group.id": f"{config.kafka.topic_prefix}dataward-sink",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
    }


def run_clickhouse_sink(
    config: Config, stop: threading.Event, ready: Callable[[], None] | None = None
) -> SinkCounters:
    """Run until ``stop`` is set. Returns the final counters."""
    topics = Topics.with_prefix(config.kafka.topic_prefix)
    store = _open_store(config, stop)
    if store is None:
        return SinkCounters()
    server: QueryServer | None = None
    consumer: Consumer | None = None
    alert_writer = AlertJsonlWriter(config.alerts_jsonl) if config.alerts_jsonl else None
    try:
        if store.embedded:
            server = QueryServer(store, config.query.host, config.query.port).start()
            server.write_addr_file(config.query_addr_file)
        consumer = Consumer(consumer_config(config))
        signalled = threading.Event()

        def signal_ready() -> None:
            if not signalled.is_set():
                signalled.set()
                if ready is not None:
                    ready()

        def on_assign(cons: Consumer, parts: list[TopicPartition]) -> None:
            log.info("partitions_assigned count=%d", len(parts))
            signal_ready()

        consumer.subscribe([topics.events, topics.alerts, topics.deadletter], on_assign=on_assign)
        sink = ClickHouseSink(store, topics, consumer, stop, alert_writer)
        log.info("sink_started store=%s group=%s", store.label, consumer_config(config)["group.id"])
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not stop.is_set():
            msgs = consumer.consume(num_messages=CONSUME_BATCH, timeout=CONSUME_TIMEOUT_S)
            signal_ready()  # after the first poll even if no assignment came (more sinks than partitions)
            if msgs:
                sink.handle_batch(msgs)
            if time.monotonic() >= next_stats:
                log.info("sink_stats %s", sink.counters.line())
                next_stats = time.monotonic() + STATS_INTERVAL_S
        log.info("sink_stopped %s", sink.counters.line())
        return sink.counters
    finally:
        if consumer is not None:
            consumer.close()
        if alert_writer is not None:
            alert_writer.close()
        if server is not None:
            server.stop()
        store.close()


def _open_store(config: Config, stop: threading.Event) -> Store | None:
    backoff = 0.0
    while not stop.is_set():
        try:
            store = Store.open(config.store_dsn, config.store.database, config.store.retention_days)
            try:
                store.ensure_schema()
            except BaseException:
                store.close()
                raise
            return store
        except StoreUnavailable as exc:
            backoff = min(RETRY_MAX_S, max(RETRY_INITIAL_S, backoff * 2))
            log.warning("store_unavailable backoff_s=%.1f error=%s", backoff, exc)
            stop.wait(backoff)
    return None
