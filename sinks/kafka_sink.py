"""The distributed-mode sink: Kafka events, alerts and dead letters into ClickHouse, exactly once.

Messages are batched across polls by size (``batch_rows``) or age (``flush_interval_s``); a flush
inserts one batch per table, every event and dead letter carrying its Kafka position, and only
then commits the offsets synchronously. A replay after a crash or a rebalance, with any batch
boundaries, skips what the store already holds (``sinks.replay``). A message that cannot be
decoded, and a row the store refuses for good, go to the dead-letter table with the reason,
never nowhere. While the store is unavailable the sink pauses its partitions and keeps polling
(so it is never evicted from its group), and retries with backoff. Stored events are sealed in
custody blocks (``sinks.custody``). The process wiring (consumer loop, query endpoint) is in
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
from dwcore.kafkalog import HEALTH
from dwcore.logfmt import kv
from dwcore.metrics import BATCH_ROWS, CONSUMER_LAG, DEADLETTERS, EVENTS_RECEIVED, ROWS_STORED, deadletter_reason
from dwcore.schemas.codec import DecodeError, decode_alert, decode_deadletter, decode_event, decode_events
from dwcore.schemas.ddl import ALERTS_TABLE, DEADLETTER_TABLE, EVENTS_TABLE, HEARTBEAT_COLUMNS, HEARTBEATS_TABLE
from dwcore.schemas.deadletter import DeadLetter, dead_letter
from dwcore.schemas.heartbeat import decode_heartbeat
from dwcore.schemas.topics import Topics
from dwcore.sinks.custody import Sealer
from dwcore.sinks.errors import StoreDiskFull, StoreFailure, StoreUnavailable
from dwcore.sinks.jsonl import AlertJsonlWriter
from dwcore.sinks.replay import ReplayGuard
from dwcore.sinks.store_writer import StoreWriter
from dwcore.sinks.stream_writer import dedup_token, insert_isolating

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
    disk_full: int = 0  # episodes of the store's disk being full (each raised one alarm)
    # Where the time goes, per stage: consume (Kafka), decode (validate, group, replay guard),
    # insert (columns, wire encoding and the engine), commit, seal (custody blocks).
    seconds: dict[str, float] = msgspec.field(default_factory=dict)

    def timed(self, stage: str, since: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - since

    def inserted_into(self, table: str) -> int:
        return self.inserted.get(table, 0)

    def line(self) -> str:
        fields: dict[str, int] = {"received": self.received}
        fields.update({f"inserted_{table}": n for table, n in sorted(self.inserted.items())})
        fields.update(deadlettered=self.deadlettered, commits=self.commits, retries=self.retries, errors=self.errors,
                      disk_full=self.disk_full)
        line = kv(**fields)
        if self.seconds:
            line += " " + kv(**{f"s_{stage}": f"{s:.2f}" for stage, s in sorted(self.seconds.items())})
        return line


class Route(NamedTuple):
    """What the sink does with one topic: how to decode a message, which table takes it."""

    table: str
    decode: Callable[[bytes], Any]
    insert: Callable[..., int]  # (records, dedup_token=...) -> rows inserted
    on_stored: Callable[[list[Any]], None] | None = None  # after the insert, before the commit
    # A whole partition's messages at once (raises DecodeError if any fails; then one by one).
    decode_many: Callable[[list[bytes | None]], list[Any]] | None = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _deadletter(msg: Message, reason: str, now_ms: int) -> DeadLetter:
    return dead_letter(msg.value() or b"", reason, f"{msg.topic()}:{msg.partition()}:{msg.offset()}", now_ms,
                       key=msg.key())


class ClickHouseSink:
    """Batches Kafka messages by size or age and stores them exactly once, whatever replays.

    ``poll()`` is the loop body: consume, add, flush when due. A flush decodes, skips what the
    store already holds (``ReplayGuard``), inserts one batch per table with the rows' positions,
    refuses bad rows one by one into the dead-letter table (bisecting a refused batch), and only
    then commits. While the store is unavailable the sink pauses its partitions and keeps
    polling, so it stays in its group however long the outage lasts, and retries with backoff.
    """

    def __init__(
        self,
        writer: StoreWriter,
        topics: Topics,
        consumer: Consumer,
        stop: threading.Event,
        alert_writer: AlertJsonlWriter | None = None,
        backoff: Backoff | None = None,
        *,
        batch_rows: int = CONSUME_BATCH,
        flush_interval_s: float = 1.0,
        sealer: Sealer | None = None,
        now: Callable[[], float] = time.monotonic,
        on_disk_full: Callable[[str], None] | None = None,
    ) -> None:
        self.writer = writer
        # Called once per disk-full episode with a message for a human (the wiring turns it into
        # an alarm event); the episode ends with the first batch stored after it.
        self.on_disk_full = on_disk_full
        self.disk_full = False
        self.consumer = consumer
        self.stop = stop
        self.counters = SinkCounters()
        self.backoff = backoff or Backoff(0.2, 30.0)
        self.batch_rows = max(1, batch_rows)
        self.flush_interval_s = flush_interval_s
        self.sealer = sealer
        self._now = now
        self.guard = ReplayGuard(writer.rows)
        self.events_topic = topics.events
        self.events_prefix = f"{topics.events}:"
        self.positioned = {topics.events, topics.deadletter}  # rows that record their Kafka position
        self.routes: dict[str, Route] = {
            topics.events: Route(EVENTS_TABLE, decode_event, writer.insert_events, decode_many=decode_events),
            topics.alerts: Route(ALERTS_TABLE, decode_alert, _without_positions(writer.insert_alerts),
                                 alert_writer.write_many if alert_writer is not None else None),
            topics.deadletter: Route(DEADLETTER_TABLE, decode_deadletter, writer.insert_deadletters),
            topics.heartbeats: Route(HEARTBEATS_TABLE, decode_heartbeat, _without_positions(
                lambda rows, dedup_token=None: writer.insert(HEARTBEATS_TABLE, HEARTBEAT_COLUMNS, rows, dedup_token))),
        }
        self.pending: dict[tuple[str, int], list[Message]] = {}
        self.pending_rows = 0
        self._oldest: float | None = None
        self.paused = False
        self._retry_at = 0.0

    # -- consumer callbacks ---------------------------------------------------------------

    def on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        HEALTH.reachable()
        # A new owner cannot know what the last one stored before it died: look first.
        self.guard.unsure(_src(tp.topic, tp.partition) for tp in parts if tp.topic in self.positioned)
        if self.paused and parts:
            consumer.pause(parts)

    def on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:
            dropped = self.pending.pop((tp.topic, tp.partition), [])
            self.pending_rows -= len(dropped)  # not committed: the next owner replays them
            src = _src(tp.topic, tp.partition)
            self.guard.forget([src])
            if self.sealer is not None:
                self.sealer.forget(src)

    # -- batching -------------------------------------------------------------------------

    def add(self, msgs: Sequence[Message]) -> None:
        pending = self.pending
        added = 0
        for msg in msgs:  # the per-message loop of the sink: kept to a few C calls
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                self.counters.errors += 1
                log.warning("consume_error %s", kv(error=err))
                continue
            key = (msg.topic(), msg.partition())
            group = pending.get(key)
            if group is None:
                group = pending[key] = []
            group.append(msg)
            added += 1
        if added:
            HEALTH.reachable()
            self.pending_rows += added
            self.counters.received += added
            EVENTS_RECEIVED.inc(added)
            if self._oldest is None:
                self._oldest = self._now()

    def due(self) -> bool:
        if not self.pending_rows or self._now() < self._retry_at:
            return False
        if self.pending_rows >= self.batch_rows:
            return True
        return self._oldest is not None and self._now() - self._oldest >= self.flush_interval_s

    def poll(self, timeout_s: float = CONSUME_TIMEOUT_S) -> None:
        """One turn of the loop. Polls even while paused: that is what keeps the group membership."""
        want = 1 if self.paused else max(1, self.batch_rows - self.pending_rows)
        started = time.perf_counter()
        msgs = self.consumer.consume(num_messages=want, timeout=timeout_s)
        if msgs:
            self.add(msgs)
            self.counters.timed("consume", started)  # an idle wait for messages is not a cost
        if self.due():
            self.flush()
        if self.sealer is not None and not self.paused:
            started = time.perf_counter()
            try:
                if self.sealer.tick():
                    self.counters.timed("seal", started)
            except StoreFailure as exc:  # both kinds: sealing catches up on a later tick
                log.warning("custody_seal_failed %s", kv(error=exc))

    def handle_batch(self, msgs: Sequence[Message]) -> bool:
        """Store these messages now, retrying through an outage until stored or stopped."""
        self.add(msgs)
        while self.pending_rows:
            if self.flush():
                return True
            if self.stop.wait(max(0.0, self._retry_at - self._now())):
                return False
        return True

    # -- storing --------------------------------------------------------------------------

    def flush(self) -> bool:
        """Store and commit everything pending. False when the store is unavailable (kept, paused)."""
        if not self.pending:
            return True
        groups = self.pending
        sources = [_src(t, p) for (t, p) in groups if t in self.positioned]
        try:
            started = time.perf_counter()
            batches = self._prepare(groups)
            self.counters.timed("decode", started)
            started = time.perf_counter()
            for table, batch in batches.items():
                self._store(table, batch)
            self.counters.timed("insert", started)
        except StoreUnavailable as exc:
            self._backpressure(exc, sources)
            return False
        BATCH_ROWS.labels("store").observe(self.pending_rows)
        started = time.perf_counter()
        self._commit(groups)
        self.counters.timed("commit", started)
        self.pending, self.pending_rows, self._oldest = {}, 0, None
        self.backoff.reset()
        self._retry_at = 0.0
        if self.paused:
            self.paused = False
            self.consumer.resume(self.consumer.assignment())
            log.info("store_recovered %s", kv(action="partitions_resumed"))
        if self.disk_full:
            self.disk_full = False
            log.warning("store_disk_space_returned %s", kv(action="alarm_cleared"))
        return True

    def _prepare(self, groups: Mapping[tuple[str, int], list[Message]]) -> dict[str, _Batch]:
        batches: dict[str, _Batch] = {}
        now_ms = _now_ms()
        for (topic, partition), msgs in groups.items():
            route = self.routes[topic]
            src = _src(topic, partition)
            if topic in self.positioned:
                stored = self.guard.stored(src, msgs[0].offset())
                if stored:
                    before = len(msgs)
                    msgs = [m for m in msgs if m.offset() not in stored]
                    self.guard.skipped += before - len(msgs)
            batch = batches.setdefault(route.table, _Batch(route))
            if route.decode_many is not None and msgs:
                try:
                    batch.extend(route.decode_many([m.value() for m in msgs]), msgs, src)
                    continue
                except DecodeError:
                    pass  # one by one below: which messages, and why
            dead = batches.setdefault(DEADLETTER_TABLE, _Batch(self.routes[self._dl_topic()]))
            for msg in msgs:
                raw = msg.value()
                if raw is None:
                    dead.add(_deadletter(msg, "empty message (tombstone)", now_ms), msg, src)
                    continue
                try:
                    record = route.decode(raw)
                except DecodeError as exc:
                    dead.add(_deadletter(msg, f"sink decode: {exc}", now_ms), msg, src)
                    continue
                if route.table == DEADLETTER_TABLE and record.source.startswith(self.events_prefix):
                    # A worker's dead letter for a message of the events topic: this sink stored
                    # its own row for that message when it failed to decode it here. One row each.
                    self.guard.skipped += 1
                    continue
                batch.add(record, msg, src)
        return {table: b for table, b in batches.items() if b.records}

    def _dl_topic(self) -> str:
        return next(t for t, r in self.routes.items() if r.table == DEADLETTER_TABLE)

    def _store(self, table: str, batch: _Batch) -> None:
        refused = self._insert_or_refuse(batch.route, batch.records, batch.msgs, batch.srcs)
        stored = [r for r in batch.records if id(r) not in refused]
        self.counters.inserted[table] = self.counters.inserted_into(table) + len(stored)
        ROWS_STORED.labels(table).inc(len(stored))
        if table == DEADLETTER_TABLE:
            # dead letters made here (undecodable messages), not those read from the dead-letter topic
            dl_topic = self._dl_topic()
            made_here = [r for r, m in zip(batch.records, batch.msgs, strict=True)
                         if id(r) not in refused and m.topic() != dl_topic]
            self.counters.deadlettered += len(made_here)
            for r in made_here:
                DEADLETTERS.labels(deadletter_reason(r.reason)).inc()
        if batch.route.on_stored is not None and stored:
            # After the insert, before the commit: a replay may repeat a line (same uid), never skip one.
            batch.route.on_stored(stored)

    def _insert_or_refuse(self, route: Route, records: list[Any], msgs: list[Message], srcs: list[str]) -> set[int]:
        """Insert; if the store refuses, halve down to the refused rows (``insert_isolating``, the
        same in both modes) and dead-letter each with the store's reason. Returns the ids of the
        refused records."""
        offsets = [m.offset() for m in msgs]
        positioned = msgs[0].topic() in self.positioned

        def insert(lo: int, hi: int) -> None:
            route.insert(records[lo:hi], dedup_token=dedup_token(route.table, srcs[lo:hi], offsets[lo:hi]),
                         positions=(srcs[lo:hi], offsets[lo:hi]) if positioned else None)

        refused: set[int] = set()
        for i, exc in insert_isolating(insert, len(records)):
            self.counters.errors += 1
            log.error("insert_refused %s", kv(table=route.table, source=f"{srcs[i]}:{offsets[i]}", error=exc))
            if route.table == DEADLETTER_TABLE and records[i].reason.startswith("store refused"):
                raise exc  # a refused dead letter cannot be parked in the dead-letter table: keep retrying
            letter = _deadletter(msgs[i], f"store refused row: {exc}", _now_ms())
            dl_route = self.routes[self._dl_topic()]
            self._insert_or_refuse(dl_route, [letter], [msgs[i]], [srcs[i]])
            self.counters.deadlettered += 1
            DEADLETTERS.labels("store_refused").inc()
            refused.add(id(records[i]))
        return refused

    def _backpressure(self, exc: StoreUnavailable, sources: list[str]) -> None:
        self.counters.retries += 1
        delay = self.backoff.next()
        self._retry_at = self._now() + delay
        self.guard.unsure(sources)  # the failed insert may have stored part of the batch
        if isinstance(exc, StoreDiskFull) and not self.disk_full:
            self.disk_full = True
            self.counters.disk_full += 1
            message = (f"The store's disk is full: the sink has paused and keeps {self.pending_rows} rows, "
                       "and everything after them waits in Kafka (nothing is dropped). Free space "
                       f"under the store; storing resumes by itself. ({exc})")
            log.error("store_disk_full %s", kv(action="alarm", pending=self.pending_rows, error=exc))
            if self.on_disk_full is not None:
                try:
                    self.on_disk_full(message)
                except Exception:  # the alarm's own failure must not stop the retry loop
                    log.exception("disk_full_alarm_failed")
        if not self.paused:
            assignment = self.consumer.assignment()
            self.consumer.pause(assignment)
            self.paused = True
            log.warning("store_backpressure %s", kv(action="partitions_paused", partitions=len(assignment),
                                                    pending=self.pending_rows, error=exc))
        else:
            log.warning("insert_retry %s", kv(backoff_s=round(delay, 2), pending=self.pending_rows, error=exc))

    def _commit(self, groups: Mapping[tuple[str, int], list[Message]]) -> None:
        offsets = [TopicPartition(t, p, msgs[-1].offset() + 1) for (t, p), msgs in groups.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Stored but not committed (e.g. a rebalance): whoever reads these again skips them.
            log.warning("commit_failed %s", kv(partitions=len(offsets), error=exc))
            self.guard.unsure(_src(t, p) for (t, p) in groups if t in self.positioned)
            return
        self.counters.commits += 1
        for (topic, partition), msgs in groups.items():
            src, last = _src(topic, partition), msgs[-1].offset()
            self.guard.committed(src, last)
            if self.sealer is not None and topic == self.events_topic:
                self.sealer.stored(src, last)


class _Batch:
    """The rows bound for one table in one flush, with the message and source of each."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.records: list[Any] = []
        self.msgs: list[Message] = []
        self.srcs: list[str] = []

    def add(self, record: Any, msg: Message, src: str) -> None:
        self.records.append(record)
        self.msgs.append(msg)
        self.srcs.append(src)

    def extend(self, records: list[Any], msgs: Sequence[Message], src: str) -> None:
        self.records.extend(records)
        self.msgs.extend(msgs)
        self.srcs.extend([src] * len(records))


def _src(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def _without_positions(insert: Callable[..., int]) -> Callable[..., int]:
    def call(records: list[Any], dedup_token: str | None = None, positions: Any = None) -> int:
        return insert(records, dedup_token=dedup_token)

    return call


LAG_INTERVAL_S = 5.0


def update_lag(consumer: Consumer) -> None:
    """dataward_consumer_lag_messages per topic: the end of each assigned partition minus the
    consumer's position (the committed offset before the first fetch)."""
    try:
        parts = consumer.assignment()
        if not parts:
            return
        lag: dict[str, int] = {}
        for tp in consumer.position(parts):
            _low, high = consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
            pos = tp.offset
            if pos < 0:  # nothing fetched yet: the committed offset, else the whole partition
                committed = consumer.committed([tp], timeout=1.0)[0].offset
                pos = committed if committed >= 0 else _low
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - pos)
        for topic, n in lag.items():
            CONSUMER_LAG.labels(topic).set(n)
    except KafkaException as exc:  # a metric must never stop the sink
        log.debug("lag_unknown %s", kv(error=exc))


def run_sink_loop(
    sink: ClickHouseSink, consumer: Consumer, stop: threading.Event, on_first_poll: Callable[[], None]
) -> SinkCounters:
    """Consume and store until ``stop`` is set; logs counters every STATS_INTERVAL_S."""
    next_stats = time.monotonic() + STATS_INTERVAL_S
    next_lag = time.monotonic() + LAG_INTERVAL_S
    while not stop.is_set():
        sink.poll()
        on_first_poll()  # after the first poll even if no assignment came (more sinks than partitions)
        if time.monotonic() >= next_lag:
            update_lag(consumer)
            next_lag = time.monotonic() + LAG_INTERVAL_S
        if time.monotonic() >= next_stats:
            log.info("sink_stats %s", sink.counters.line())
            next_stats = time.monotonic() + STATS_INTERVAL_S
    if sink.pending_rows and not sink.flush():
        log.warning("sink_stop_unflushed %s", kv(rows=sink.pending_rows, action="replayed_on_next_start"))
    if sink.sealer is not None:
        try:
            sink.sealer.tick(force=True)
        except (StoreFailure, StoreUnavailable) as exc:
            log.warning("custody_seal_failed %s", kv(error=exc))
    log.info("sink_stopped %s", sink.counters.line())
    return sink.counters
