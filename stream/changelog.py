"""Per-user detector state in memory, with a compacted Kafka topic (the changelog) as its durable copy.

Each record is one user's table entry (the batch core's ``[offset, state]`` bytes), keyed by the
user name as JSON and written to the partition of that user's events: the layout faust's
changelog-backed table used, so a worker that ran the faust processor before recovers the same
state. A record is written once per touched user per batch, never per event.

Recovery reads a partition's records from the start to its end offset when the worker is
assigned that partition. A partition the worker already holds is not read again when nothing was
written to it since (its end offset is the one the worker last saw), which keeps a rebalance
that hands the same partitions back cheap.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import cast

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from dwcore.logfmt import kv

log = logging.getLogger(__name__)

_key_decoder = msgspec.json.Decoder(str)
_key_encoder = msgspec.json.Encoder()


class ChangelogError(RuntimeError):
    """The broker did not acknowledge a state record (or refused to serve the changelog)."""


class ChangelogState:
    """``values`` (user -> entry bytes) is what the batch core reads and writes; ``write`` queues
    a record, the producer's flush makes it durable (see BatchWorker for the order)."""

    def __init__(self, client: Mapping[str, str], topic: str, producer: Producer | None = None) -> None:
        self.topic = topic
        self.values: dict[str, bytes] = {}
        self._client = dict(client)
        self.producer = producer  # set by the worker before the first write
        self._partition_of: dict[str, int] = {}
        self._end: dict[int, int] = {}  # changelog partition -> end offset this worker's copy reflects
        self.failed: list[KafkaError] = []
        self.written = 0
        self.recovered = 0

    def partition_of(self, user: str) -> int | None:
        return self._partition_of.get(user)

    def write(self, user: str, value: bytes, partition: int) -> None:
        self.values[user] = value
        self._partition_of[user] = partition
        self.written += 1
        assert self.producer is not None, "ChangelogState.write before the producer was set"
        produce = self.producer.produce
        key = _key_encoder.encode(user)
        while True:
            try:
                produce(self.topic, key=key, value=value, partition=partition, on_delivery=self._delivered)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self.producer.poll(0.05)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(err)
            return
        partition, offset = msg.partition(), msg.offset()
        if partition is not None and offset is not None and offset + 1 > self._end.get(partition, 0):
            self._end[partition] = offset + 1

    def raise_failed(self) -> None:
        if self.failed:
            err, self.failed = self.failed[0], []
            raise ChangelogError(f"state record not acknowledged by the broker: {err}")

    def keep_only(self, partitions: Iterable[int]) -> None:
        """Forget the users of every partition not in ``partitions`` (no longer this worker's)."""
        keep = set(partitions)
        for user in [u for u, p in self._partition_of.items() if p not in keep]:
            del self._partition_of[user]
            self.values.pop(user, None)
        for partition in [p for p in self._end if p not in keep]:
            del self._end[partition]

    def recover(self, partitions: Iterable[int], timeout_s: float = 120.0) -> int:
        """Bring the users of ``partitions`` up to date from the changelog; returns records read."""
        consumer = Consumer({**self._client, "group.id": f"{self.topic}-recovery", "enable.auto.commit": False,
                             "enable.partition.eof": False, "auto.offset.reset": "earliest"})
        try:
            wanted: dict[int, int] = {}
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=timeout_s)
                if self._end.get(partition) == high:
                    continue  # nothing written since this worker last held it
                self._forget(partition)
                if high > low:
                    wanted[partition] = high
                else:
                    self._end[partition] = high
            if not wanted:
                return 0
            started = time.monotonic()
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in wanted])
            read = 0
            left = dict(wanted)
            while left:
                if time.monotonic() - started > timeout_s:
                    raise ChangelogError(f"changelog {self.topic} not read to its end within {timeout_s:.0f} s "
                                         f"(partitions {sorted(left)})")
                for msg in consumer.consume(10_000, timeout=0.5):
                    if msg.error() is not None:
                        raise ChangelogError(f"reading changelog {self.topic}: {msg.error()}")
                    partition, offset = cast(int, msg.partition()), cast(int, msg.offset())
                    self._apply(msg.key(), msg.value(), partition)
                    read += 1
                    if offset + 1 >= left.get(partition, 0):
                        left.pop(partition, None)
            for partition, high in wanted.items():
                self._end[partition] = high
            self.recovered += read
            log.info("state_recovered %s", kv(topic=self.topic, partitions=len(wanted), records=read,
                                               users=len(self.values), seconds=round(time.monotonic() - started, 2)))
            return read
        finally:
            consumer.close()

    def _forget(self, partition: int) -> None:
        for user in [u for u, p in self._partition_of.items() if p == partition]:
            del self._partition_of[user]
            self.values.pop(user, None)
        self._end.pop(partition, None)

    def _apply(self, key: bytes | None, value: bytes | None, partition: int) -> None:
        if key is None:
            return
        try:
            user = _key_decoder.decode(key)
        except msgspec.DecodeError:
            log.error("changelog_bad_key %s", kv(topic=self.topic, partition=partition, key=key[:80]))
            return
        if value is None:  # a tombstone: the user's state was dropped
            self.values.pop(user, None)
            self._partition_of.pop(user, None)
            return
        self.values[user] = value
        self._partition_of[user] = partition
