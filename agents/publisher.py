"""The durable publisher: spool first, then Kafka; a record leaves the spool only when acked.

Flow: ``publish`` encodes a batch, appends it to the spool (one fsync), then produces it. A delivery
report acks the record in the spool. Failed deliveries (broker down, timeouts) are resent from the
spool by a service thread, so events published while the broker is away go out when it returns,
and events spooled by an earlier run (crash, kill, outage) are replayed on start. The guarantee is
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

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from dwcore.agents.spool import RecordId, Spool, SpoolFullError
from dwcore.schemas.codec import encode
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.event import AccessEvent

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, str | int | bool] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 20,
    "compression.type": "lz4",
    "partitioner": "murmur2_random",
}
# Errors about the message itself: resending can never work, so the record is set aside whole.
_PERMANENT = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
                        KafkaError.INVALID_RECORD})
REJECTED_FILE = "rejected.jsonl"
_TAKEN, _REJECTED, _STOP = "taken", "rejected", "stop"


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
        producer_overrides: dict[str, str | int | bool] | None = None,
        produce_budget_s: float = 0.5,
        service_interval_s: float = 0.1,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self.topic = topic
        self.device = device
        self._spool = Spool(spool_dir)
        self._rejected_path = Path(spool_dir) / REJECTED_FILE
        conf: dict[str, str | int | bool] = {**client_config, **PRODUCER_DEFAULTS,
                                              "client.id": f"dataward-agent-{device}"}
        conf.update(producer_overrides or {})
        # librdkafka's own log lines go through logging, not straight to stderr.
        self._producer = Producer(conf, logger=logging.getLogger("dwcore.agents.librdkafka"))
        self._budget_s = produce_budget_s
        self._retry_backoff_s = retry_backoff_s
        self._service_interval_s = service_interval_s
        self._lock = threading.RLock()
        self._inflight: set[RecordId] = set()
        self._cursor: RecordId | None = None  # every spool record up to here was produced once
        self._rewind: RecordId | None = None  # smallest record whose delivery failed
        self._retry_after = 0.0
        self._acks: list[RecordId] = []
        self._mem_waiting: deque[tuple[bytes, bytes]] = deque()  # not spooled: the disk was full
        self._mem_inflight = 0
        self._failing = False
        self._closed = False
        self._counters = {"published": 0, "acked": 0, "errors": 0, "resent": 0, "rejected": 0, "spool_full": 0}
        replay = self._spool.pending
        if replay:
            log.info("spool_replay topic=%s pending=%d", topic, replay)
        self._stop = threading.Event()
        self._service = threading.Thread(target=self._service_loop, name="dw-publisher", daemon=True)
        self._service.start()

    # public API

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return {**self._counters, "spooled_pending": self.pending}

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
        records = [(e.user_name.encode(), encode(e)) for e in events]
        with self._lock:
            if self._closed:
                raise RuntimeError("publisher is closed")
            self._counters["published"] += len(records)
            before = self._spool.last_id
            try:
                ids = self._spool.append(records)
            except SpoolFullError as exc:
                self._counters["spool_full"] += 1
                log.warning("spool_full events=%d action=memory_only error=%s", len(records), exc)
                self._mem_waiting.extend(records)
                self._pump(time.monotonic() + self._budget_s)
                return
            deadline = time.monotonic() + self._budget_s
            if self._rewind is None and self._cursor == before and not self._mem_waiting:
                # Caught up: produce straight from memory, no read-back from the spool.
                self._produce_spooled(((rid, k, v) for rid, (k, v) in zip(ids, records, strict=True)), deadline)
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
                log.error("publisher_closed_with_unspooled events=%d reason=spool_disk_full action=lost", lost)
            self._spool.close()
            log.info("publisher_closed topic=%s %s", self.topic,
                     " ".join(f"{k}={v}" for k, v in self.counters.items()))
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
            if taken is _TAKEN:
                self._mem_inflight += 1
        start = self._rewind if self._rewind is not None else _next_id(self._cursor)
        self._rewind = None
        self._produce_spooled(self._spool.iter_unacked(start), deadline)

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
            if taken is _REJECTED:
                self._acks.append(rid)
            else:
                self._inflight.add(rid)
            if resend:
                self._counters["resent"] += 1
            else:
                self._cursor = rid

    def _produce(self, key: bytes, value: bytes, cb: functools.partial, deadline: float) -> str:
        """_TAKEN by the producer, _REJECTED for good (set aside), or _STOP this round (kept for later)."""
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
                if isinstance(err, KafkaError) and err.code() in _PERMANENT:
                    self._reject(err, None, key, value)
                    return _REJECTED
                log.warning("produce_failed topic=%s error=%s action=retry_later", self.topic, exc)
                self._retry_after = time.monotonic() + self._retry_backoff_s
                return _STOP

    def _on_delivery(self, rid: RecordId, err: KafkaError | None, msg: Message | None) -> None:
        self._inflight.discard(rid)
        if err is None:
            self._counters["acked"] += 1
            self._acks.append(rid)
            self._recovered()
            return
        self._counters["errors"] += 1
        if err.code() in _PERMANENT:
            self._reject(err, msg)
            self._acks.append(rid)
            return
        self._rewind = rid if self._rewind is None else min(self._rewind, rid)
        self._retry_after = time.monotonic() + self._retry_backoff_s
        self._failed(err)

    def _on_mem_delivery(self, key: bytes, value: bytes, err: KafkaError | None, msg: Message | None) -> None:
        self._mem_inflight -= 1
        if err is None:
            self._counters["acked"] += 1
            self._recovered()
            return
        self._counters["errors"] += 1
        if err.code() in _PERMANENT:
            self._reject(err, msg, key, value)
            return
        self._mem_waiting.append((key, value))
        self._retry_after = time.monotonic() + self._retry_backoff_s
        self._failed(err)

    def _failed(self, err: KafkaError) -> None:
        # One line per outage, not one per message: a dead broker fails thousands at once.
        if not self._failing and err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
            self._failing = True
            log.warning("delivery_failing topic=%s error=%s action=kept_in_spool_will_resend", self.topic, err.str())

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("delivery_recovered topic=%s pending=%d", self.topic, self._spool.pending)

    def _reject(self, err: KafkaError, msg: Message | None, key: bytes | None = None,
                value: bytes | None = None) -> None:
        """Sets a record Kafka can never take aside in rejected.jsonl: out of the queue, not lost."""
        self._counters["rejected"] += 1
        raw = value if value is not None else (msg.value() if msg is not None else b"") or b""
        letter = DeadLetter(raw=raw, key=key if key is not None else (msg.key() if msg is not None else None),
                            reason=f"kafka refused the message: {err.str()}", source=f"agent:{self.device}",
                            time=int(time.time() * 1000))
        with open(self._rejected_path, "ab") as f:
            f.write(encode(letter) + b"\n")
        log.error("record_rejected topic=%s error=%s file=%s", self.topic, err.str(), self._rejected_path)
