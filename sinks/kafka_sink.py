"""The distributed-mode sink: Kafka events, alerts and dead letters into ClickHouse, exactly once.

Messages are batched across polls by size (``batch_rows``) or age (``flush_interval_s``); a flush
inserts one batch per table, every event and dead letter carrying its Kafka position, and only
then commits the offsets synchronously. A replay after a crash or a rebalance, with any batch
boundaries, skips what the store already holds (``sinks.replay``). A message that cannot be
decoded, and a row the store refuses for good, go to the dead-letter table with the reason,
never nowhere. While the store is unavailable the sink pauses its partitions and keeps polling
(so it is never evicted from its group), and retries with backoff. Stored events are sealed in
custody blocks (``sinks.custody``).

This module is the consume loop: batching, flushing, backpressure and commits. Routing and
decoding are in ``sinks.sink_routes``, the inserts and refused rows in ``sinks.sink_insert``, the
counters in ``sinks.sink_stats``. The process wiring (query endpoint, alarms) is in
``dataward.distributed``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from dwcore.backoff import Backoff
from dwcore.kafkalog import HEALTH
from dwcore.logfmt import kv
from dwcore.metrics import BATCH_ROWS, CONSUMER_LAG, EVENTS_RECEIVED
from dwcore.schemas.topics import Topics
from dwcore.sinks.custody import Sealer
from dwcore.sinks.errors import StoreDiskFull, StoreFailure, StoreUnavailable
from dwcore.sinks.jsonl import AlertJsonlWriter
from dwcore.sinks.replay import ReplayGuard
from dwcore.sinks.sink_insert import BatchInserter
from dwcore.sinks.sink_routes import Router, src_of
from dwcore.sinks.sink_stats import SinkCounters
from dwcore.sinks.store_writer import StoreWriter

__all__ = ["ClickHouseSink", "SinkCounters", "run_sink_loop", "update_lag"]

log = logging.getLogger(__name__)

CONSUME_BATCH = 10_000
CONSUME_TIMEOUT_S = 0.5
STATS_INTERVAL_S = 10.0


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
        self.router = Router(writer, topics, self.guard, alert_writer)
        self.inserter = BatchInserter(self.router, self.counters)
        self.events_topic = topics.events
        self.positioned = self.router.positioned  # rows that record their Kafka position
        self.pending: dict[tuple[str, int], list[Message]] = {}
        self.pending_rows = 0
        self._oldest: float | None = None
        self.paused = False
        self._retry_at = 0.0

    # -- consumer callbacks ---------------------------------------------------------------

    def on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        HEALTH.reachable()
        # A new owner cannot know what the last one stored before it died: look first.
        self.guard.unsure(src_of(tp.topic, tp.partition) for tp in parts if tp.topic in self.positioned)
        if self.paused and parts:
            consumer.pause(parts)

    def on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:
            dropped = self.pending.pop((tp.topic, tp.partition), [])
            self.pending_rows -= len(dropped)  # not committed: the next owner replays them
            src = src_of(tp.topic, tp.partition)
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
        sources = [src_of(t, p) for (t, p) in groups if t in self.positioned]
        try:
            started = time.perf_counter()
            batches = self.router.prepare(groups)
            self.counters.timed("decode", started)
            started = time.perf_counter()
            for table, batch in batches.items():
                self.inserter.store(table, batch)
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
            self.guard.unsure(src_of(t, p) for (t, p) in groups if t in self.positioned)
            return
        self.counters.commits += 1
        for (topic, partition), msgs in groups.items():
            src, last = src_of(topic, partition), msgs[-1].offset()
            self.guard.committed(src, last)
            if self.sealer is not None and topic == self.events_topic:
                self.sealer.stored(src, last)


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
