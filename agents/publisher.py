"""The durable publisher: spool first, then Kafka; a record leaves the spool only when acked.

Flow: ``publish`` encodes a batch, appends it to the spool (one fsync), then produces it. A delivery
report acks the record in the spool. Failed deliveries (broker down, timeouts) are resent from the
spool by a service thread (with ``dwcore.backoff``), so events published while the broker is away go
out when it returns, and events spooled by an earlier run (crash, kill, outage) are replayed on start.
A record Kafka can never take (too large, invalid) goes to the dead-letter topic with the reason,
like every other refused message in dataward (``agents.deadletters``), and leaves the spool only once
that is acked. Records are encoded by ``agents.records``. The guarantee is
at-least-once: a record delivered but not yet acked when the agent dies is sent again, with the
same event ``uid`` for consumers to deduplicate.

Keys are user names and the partitioner is ``murmur2_random``, the Java client's and aiokafka's,
so a user's events land on the partition that faust's per-user table expects.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from dwcore.agents.deadletters import PERMANENT, DeadLetters, raw_max_for
from dwcore.agents.records import encode_records, spool_full_alarm
from dwcore.agents.spool import RecordId, Spool, SpoolFullError
from dwcore.backoff import Backoff
from dwcore.kafkalog import HEALTH, client_hooks
from dwcore.logfmt import kv
from dwcore.metrics import BATCH_ROWS, DEADLETTERS, EVENTS_RECEIVED, EVENTS_SENT
from dwcore.schemas.event import AccessEvent

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, str | int | bool] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 20,
    "compression.type": "lz4",
    "partitioner": "murmur2_random",
}
_TAKEN, _STOP = "taken", "stop"


def _next_id(rid: RecordId | None) -> RecordId | None:
    return None if rid is None else (rid[0], rid[1] + 1)


class KafkaPublisher:
    """Thread-safe: ``publish`` may be called from any thread; a service thread polls and resends."""

    def __init__(
        self,
        client_config: Mapping[str, str],
        topic: str,
        spool_dir: Path,
        device: str,
        *,
        deadletter_topic: str,
        producer_overrides: dict[str, str | int | bool] | None = None,
        produce_budget_s: float = 0.5,
        service_interval_s: float = 0.1,
        backoff: Backoff | None = None,
        spool_max_bytes: int = 0,
    ) -> None:
        self.topic = topic
        self.deadletter_topic = deadletter_topic
        self.device = device
        self._spool = Spool(spool_dir, max_bytes=spool_max_bytes)
        self._spool_full_since: float | None = None
        # librdkafka's own log lines go through logging (dwcore.kafkalog), not straight to stderr.
        conf: dict[str, Any] = {**client_hooks(), **client_config, **PRODUCER_DEFAULTS,
                                "client.id": f"dataward-agent-{device}"}
        conf.update(producer_overrides or {})
        self._producer = Producer(conf)
        limit = int(conf.get("message.max.bytes", 1_000_000))
        self._deadletter_raw_max = raw_max_for(limit)
        self._budget_s = produce_budget_s
        self._backoff = backoff or Backoff(0.5, 10.0)
        self._service_interval_s = service_interval_s
        self._lock = threading.RLock()
        self._inflight: set[RecordId] = set()
        self._cursor: RecordId | None = None  # every spool record up to here was produced once
        self._rewind: RecordId | None = None  # smallest record whose delivery failed
        self._retry_after = 0.0
        self._acks: list[RecordId] = []
        # Deliveries reported (by librdkafka's callback, in any thread) and not yet settled.
        self._delivered: deque[RecordId] = deque()
        self._mem_waiting: deque[tuple[bytes, bytes]] = deque()  # not spooled: the disk was full
        self._mem_inflight = 0
        self._failing = False
        self._closed = False
        self._counters = {"published": 0, "acked": 0, "errors": 0, "resent": 0, "rejected": 0, "lost": 0,
                          "spool_full": 0}
        self._letters = DeadLetters(self._producer, topic, deadletter_topic, device, self._deadletter_raw_max,
                                    self._counters)
        replay = self._spool.pending
        if replay:
            log.info("spool_replay %s", kv(topic=topic, pending=replay))
        self._stop = threading.Event()
        self._service = threading.Thread(target=self._service_loop, name="dw-publisher", daemon=True)
        self._service.start()

    # public API

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            self._settle()
            return {**self._counters, "spooled_pending": self.pending}

    @property
    def spool_full(self) -> bool:
        """True while batches are refused by the spool (disk or cap) and held in memory."""
        return self._spool_full_since is not None

    @property
    def pending(self) -> int:
        """Records not yet acked by Kafka: in the spool, or only in memory when the disk was full."""
        with self._lock:
            return self._spool.pending + len(self._mem_waiting) + self._mem_inflight

    def publish(self, events: Sequence[AccessEvent]) -> None:
        """Spools the batch durably, then produces it. Returns once the batch is on disk (or, when
        the disk is full, held in memory); delivery happens in the background."""
        if not events:
            return
        records = encode_records(events)
        with self._lock:
            if self._closed:
                raise RuntimeError("publisher is closed")
            self._counters["published"] += len(records)
            EVENTS_RECEIVED.inc(len(records))
            BATCH_ROWS.labels("publish").observe(len(records))
            before = self._spool.last_id
            try:
                ids = self._spool.append(records)
            except SpoolFullError as exc:
                self._counters["spool_full"] += 1
                log.error("spool_full events=%d action=memory_only_until_kafka_drains_the_spool error=%s",
                          len(records), exc)
                if self._spool_full_since is None:
                    # Loud, once per episode: an alarm event goes out with the batch (from memory).
                    self._spool_full_since = time.time()
                    self._mem_waiting.append(spool_full_alarm(self.device, str(exc)))
                self._mem_waiting.extend(records)
                self._pump(time.monotonic() + self._budget_s)
                return
            if self._spool_full_since is not None:
                log.warning("spool_recovered full_for_s=%.1f", time.time() - self._spool_full_since)
                self._spool_full_since = None
            deadline = time.monotonic() + self._budget_s
            if self._rewind is None and self._cursor == before and not self._mem_waiting:
                # Caught up: produce straight from memory, no read-back from the spool.
                self._produce_fresh(ids, records, deadline)
            else:
                self._pump(deadline)

    def flush(self, timeout: float = 10.0) -> int:
        """Waits until everything is acked or ``timeout`` passes; returns how many are still pending."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._producer.poll(0)
                self._settle()
                if self._rewind is not None or self._behind():
                    self._retry_after = 0.0
                    self._pump(min(deadline, time.monotonic() + self._budget_s))
                left = self.pending
            remaining = deadline - time.monotonic()
            if left == 0 or remaining <= 0:
                return left
            # Outside the lock: delivery reports are served here and publish can go on meanwhile.
            self._producer.flush(min(0.1, remaining))

    def close(self, timeout: float = 10.0) -> int:
        """Flushes for up to ``timeout``, then stops; unacked records stay in the spool for the next
        start. Returns how many were left pending."""
        if self._closed:
            return self.pending
        left = self.flush(timeout)
        self._stop.set()
        self._service.join()
        with self._lock:
            self._closed = True
            if left:
                # Fail what is still queued at once; the spool keeps it for the next run.
                self._producer.purge(in_queue=True, in_flight=True, blocking=True)
                self._producer.poll(0)
                self._settle()
            left = self.pending
            lost = len(self._mem_waiting) + self._mem_inflight
            if lost:
                log.error("publisher_closed_with_unspooled %s",
                          kv(events=lost, reason="spool_disk_full", action="lost"))
            self._spool.close()
            log.info("publisher_closed %s", kv(topic=self.topic, **self.counters))
        return left

    # internals (all under self._lock)

    def _behind(self) -> bool:
        last = self._spool.last_id
        return bool(self._mem_waiting) or (last is not None and (self._cursor is None or last > self._cursor))

    def _service_loop(self) -> None:
        while not self._stop.wait(self._service_interval_s):
            with self._lock:
                try:
                    self._producer.poll(0)
                    self._settle()
                    if time.monotonic() >= self._retry_after and (self._rewind is not None or self._behind()):
                        self._pump(time.monotonic() + self._budget_s / 2)
                except Exception:  # the service thread must outlive any one bad tick
                    self._counters["errors"] += 1
                    log.exception("publisher_service_error")

    def _settle(self) -> None:
        delivered = self._delivered
        if delivered:
            got = [delivered.popleft() for _ in range(len(delivered))]
            self._inflight.difference_update(got)
            self._counters["acked"] += len(got)
            EVENTS_SENT.inc(len(got))
            self._acks += got
            self._recovered()
        if self._acks:
            acks, self._acks = self._acks, []
            self._spool.ack(acks)

    def _pump(self, deadline: float) -> None:
        while self._mem_waiting:
            key, value = self._mem_waiting[0]
            cb = functools.partial(self._on_mem_delivery, key, value)
            taken = self._produce(key, value, cb, deadline)
            if taken is _STOP:
                return
            self._mem_waiting.popleft()
            self._mem_inflight += 1
            if isinstance(taken, KafkaError):
                self._dead_letter(taken, key, value, functools.partial(self._on_mem_deadletter, key, value))
        start = self._rewind if self._rewind is not None else _next_id(self._cursor)
        self._rewind = None
        self._produce_spooled(self._spool.iter_unacked(start), deadline)

    def _produce_fresh(self, ids: list[RecordId], records: list[tuple[bytes, bytes]], deadline: float) -> None:
        """Produces records just spooled, none produced before (the common case, kept lean: one
        produce and one set insert per record); anything unusual goes to ``_produce_spooled``."""
        produce, topic, cb, inflight = self._producer.produce, self.topic, self._on_delivery, self._inflight
        partial = functools.partial
        for i, (key, value) in enumerate(records):
            rid = ids[i]
            try:
                produce(topic, value=value, key=key, on_delivery=partial(cb, rid))
            except (BufferError, KafkaException):
                # Backpressure or a refusal: the general loop handles it, from this record on.
                if i:
                    self._cursor = ids[i - 1]
                self._produce_spooled(zip(ids[i:], (k for k, _ in records[i:]), (v for _, v in records[i:]),
                                          strict=True), deadline)
                return
            inflight.add(rid)
        if ids:
            self._cursor = ids[-1]

    def _produce_spooled(self, records: Iterable[tuple[RecordId, bytes, bytes]], deadline: float) -> None:
        for rid, key, value in records:
            if rid in self._inflight or self._spool.is_acked(rid):
                continue
            resend = self._cursor is not None and rid <= self._cursor
            taken = self._produce(key, value, functools.partial(self._on_delivery, rid), deadline)
            if taken is _STOP:
                if resend:
                    self._rewind = rid if self._rewind is None else min(self._rewind, rid)
                return
            self._inflight.add(rid)  # until Kafka acks it, or its dead letter
            if isinstance(taken, KafkaError):
                self._dead_letter(taken, key, value, functools.partial(self._on_deadletter_delivery, rid))
            if resend:
                self._counters["resent"] += 1
            else:
                self._cursor = rid

    def _produce(self, key: bytes, value: bytes, cb: functools.partial, deadline: float) -> str | KafkaError:
        """_TAKEN by the producer, _STOP this round (kept for later), or the error that refuses it for good."""
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=cb)
                return _TAKEN
            except BufferError:
                # librdkafka's local queue is full: serve delivery reports to make room (backpressure).
                if time.monotonic() >= deadline:
                    return _STOP
                self._producer.poll(0.05)
                self._settle()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                self._counters["errors"] += 1
                if isinstance(err, KafkaError) and err.code() in PERMANENT:
                    return err
                log.warning("produce_failed %s", kv(topic=self.topic, error=exc, action="retry_later"))
                self._retry_after = time.monotonic() + self._backoff.next()
                return _STOP

    # Delivery reports run in whichever thread serves the producer: flush() serves them outside
    # the lock, so each report takes the (re-entrant) lock itself before touching the bookkeeping.
    def _on_delivery(self, rid: RecordId, err: KafkaError | None, msg: Message | None) -> None:
        if err is None:
            # The common case takes no lock: a deque append is atomic; _settle books it.
            self._delivered.append(rid)
            return
        with self._lock:
            self._on_delivery_locked(rid, err, msg)

    def _on_mem_delivery(self, key: bytes, value: bytes, err: KafkaError | None, msg: Message | None) -> None:
        with self._lock:
            self._on_mem_delivery_locked(key, value, err, msg)

    def _on_delivery_locked(self, rid: RecordId, err: KafkaError | None, msg: Message | None) -> None:
        self._inflight.discard(rid)
        if err is None:
            self._counters["acked"] += 1
            EVENTS_SENT.inc()
            self._acks.append(rid)
            self._recovered()
            return
        self._counters["errors"] += 1
        if err.code() in PERMANENT and msg is not None:
            self._inflight.add(rid)
            self._dead_letter(err, msg.key(), msg.value(), functools.partial(self._on_deadletter_delivery, rid))
            return
        self._retry_spooled(rid, err)

    def _retry_spooled(self, rid: RecordId, err: KafkaError) -> None:
        self._rewind = rid if self._rewind is None else min(self._rewind, rid)
        self._retry_after = time.monotonic() + self._backoff.next()
        self._failed(err)

    def _on_mem_delivery_locked(self, key: bytes, value: bytes, err: KafkaError | None,
                                msg: Message | None) -> None:
        if err is None:
            self._mem_inflight -= 1
            self._counters["acked"] += 1
            EVENTS_SENT.inc()
            self._recovered()
            return
        self._counters["errors"] += 1
        if err.code() in PERMANENT:
            self._dead_letter(err, key, value, functools.partial(self._on_mem_deadletter, key, value))
            return
        self._retry_memory(key, value, err)

    def _retry_memory(self, key: bytes, value: bytes, err: KafkaError) -> None:
        self._mem_inflight -= 1
        self._mem_waiting.append((key, value))
        self._retry_after = time.monotonic() + self._backoff.next()
        self._failed(err)

    def _failed(self, err: KafkaError) -> None:
        # One line per outage, not one per message: a dead broker fails thousands at once.
        if not self._failing and err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
            self._failing = True
            log.warning("delivery_failing %s", kv(topic=self.topic, error=err.str(),
                                                  action="kept_in_spool_will_resend"))

    def _recovered(self) -> None:
        HEALTH.reachable()
        self._backoff.reset()
        if self._failing:
            self._failing = False
            log.info("delivery_recovered %s", kv(topic=self.topic, pending=self._spool.pending))

    # dead letters (agents/deadletters.py): the record settles once its dead letter is acked

    def _dead_letter(self, err: KafkaError, key: bytes | None, value: bytes | None,
                     on_done: functools.partial) -> None:
        DEADLETTERS.labels("kafka_refused").inc()
        self._letters.send(err, key, value, on_done)

    def _on_deadletter_delivery(self, rid: RecordId, err: KafkaError | None, msg: Message | None) -> None:
        with self._lock:
            self._inflight.discard(rid)
            if self._letters.settled(err):
                self._acks.append(rid)
            else:
                assert err is not None
                self._retry_spooled(rid, err)

    def _on_mem_deadletter(self, key: bytes, value: bytes, err: KafkaError | None, msg: Message | None) -> None:
        with self._lock:
            if self._letters.settled(err):
                self._mem_inflight -= 1
            else:
                assert err is not None
                self._retry_memory(key, value, err)
