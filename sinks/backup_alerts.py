"""Distributed mode: the controller's feed of alerts, a consumer of dw.alerts.

Each controller has its own consumer group (every controller must see every alert). On its very
first start a group begins at the end of the topic (old, long-handled incidents must not halt a
new deployment); after that committed offsets carry it across restarts, so an alert raised while
the controller was down is still acted on when it comes back.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from dwcore.logfmt import kv
from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import DecodeError, decode_alert

log = logging.getLogger(__name__)


def follow_alerts(client_config: Mapping[str, str], topic: str, group: str, on_alert: Callable[[Alert], object],
                  stop: threading.Event, ready: Callable[[], None] | None = None, poll_s: float = 0.05) -> int:
    """Consume until stop is set; returns the number of alerts handed to on_alert."""
    from confluent_kafka import Consumer, KafkaError

    consumer = Consumer({**client_config, "group.id": group, "enable.auto.commit": True,
                         "auto.offset.reset": "latest", "fetch.wait.max.ms": 10})
    assigned = threading.Event()

    def on_assign(c: Consumer, partitions: list) -> None:
        # Pin the start explicitly (committed offset, else the current end) so that "ready" means
        # every alert produced from now on will be seen.
        committed = c.committed(partitions, timeout=10)
        for tp in committed:
            if tp.offset < 0:
                tp.offset = c.get_watermark_offsets(tp, timeout=10)[1]
        c.assign(committed)
        assigned.set()

    consumer.subscribe([topic], on_assign=on_assign)
    seen = 0
    try:
        while not stop.is_set():
            msg = consumer.poll(poll_s)
            if assigned.is_set() and ready is not None:
                ready()
                ready = None
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.error("alerts_consume_error %s", kv(error=msg.error()))
                continue
            try:
                alert = decode_alert(msg.value() or b"")
            except DecodeError as exc:
                log.error("alert_undecodable %s", kv(offset=msg.offset(), reason=str(exc)[:200]))
                continue
            seen += 1
            try:
                on_alert(alert)
            except Exception:
                log.exception("backup_on_alert_failed %s", kv(uid=alert.uid))
    finally:
        consumer.close()
    return seen
