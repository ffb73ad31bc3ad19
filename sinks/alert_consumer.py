"""The distributed mode's alert delivery: consume ``dw.alerts`` into the outbox, at least once.

Per polled batch: decode, ``router.commit`` (durable in the outbox), then commit the Kafka
offsets, then the in-process subscribers. A crash before the offset commit re-reads the batch
and queues the same alert versions again: receivers see the same webhook-id / dedup_key.
Several processes in one consumer group share the topic's partitions.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import DecodeError, decode_alert
from dwcore.sinks.alert_router import AlertRouter
from dwcore.sinks.consumer_config import consumer_config

log = logging.getLogger(__name__)

CONSUME_BATCH = 500
CONSUME_TIMEOUT_S = 0.2


def run_alert_consumer(
    client: Mapping[str, str],
    group_id: str,
    topic: str,
    router: AlertRouter,
    stop: threading.Event,
    ready: Callable[[], None] | None = None,
) -> int:
    """Run until ``stop``; returns how many alerts were queued."""
    consumer = Consumer(consumer_config(client, group_id))
    announced = threading.Event()

    def announce(*_args: object) -> None:
        if not announced.is_set():
            announced.set()
            if ready:
                ready()

    consumer.subscribe([topic], on_assign=announce)
    queued = 0
    try:
        while not stop.is_set():
            msgs = consumer.consume(num_messages=CONSUME_BATCH, timeout=CONSUME_TIMEOUT_S)
            announce()
            alerts: list[Alert] = []
            upto: dict[tuple[str, int], int] = {}
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal():
                        raise KafkaException(err)
                    log.warning("consume_error error=%s", err)
                    continue
                upto[(msg.topic(), msg.partition())] = msg.offset() + 1
                try:
                    alerts.append(decode_alert(msg.value() or b""))
                except DecodeError as exc:
                    # The ClickHouse sink dead-letters it with the same reason; here it cannot page anyone.
                    log.error("alert_undecodable source=%s:%d:%d reason=%r", msg.topic(), msg.partition(),
                              msg.offset(), str(exc)[:300])
            if not upto:
                continue
            router.commit(alerts)  # raises if the outbox cannot take them: offsets stay uncommitted
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in upto.items()], asynchronous=False)
            queued += len(alerts)
            router.publish(alerts)
    finally:
        consumer.close()
    return queued
