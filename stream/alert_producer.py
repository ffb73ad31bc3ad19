"""Alerts to ``dw.alerts`` before the detector state that raised them is written.

faust's own send only enqueues; the state table's changelog is written on its own schedule, so a
worker that died between the two could come back with the state moved on and the alert never
sent (the replay is skipped as already counted). This producer blocks until every alert of the
user's batch is acknowledged by all in-sync replicas and raises otherwise, so the state write
(``detect_user(before_commit=...)``) only happens after. Alerts are rare: the wait is a few ms.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from confluent_kafka import KafkaError, Message, Producer

from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import encode

log = logging.getLogger(__name__)


class AlertPublishError(RuntimeError):
    """The broker did not acknowledge an alert: the state must not move on."""


class DurableAlertPublisher:
    def __init__(self, client: Mapping[str, str], topic: str, timeout_s: float = 150.0) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        # Idempotent, acks=all: a retried produce never duplicates, an ack means every replica has it.
        self._producer = Producer({**client, "acks": "all", "enable.idempotence": True, "linger.ms": 0,
                                   "delivery.timeout.ms": int(timeout_s * 1000) - 5000})

    def __call__(self, alerts: Sequence[Alert]) -> None:
        failed: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.append(err)

        for alert in alerts:
            self._producer.produce(self.topic, key=alert.user.encode(), value=encode(alert), on_delivery=on_delivery)
        left = self._producer.flush(self.timeout_s)
        if left or failed:
            raise AlertPublishError(f"{len(failed) + left} of {len(alerts)} alerts not acknowledged by the broker: "
                                    f"{failed[0] if failed else 'timeout'}")

    def close(self) -> None:
        self._producer.flush(10)
