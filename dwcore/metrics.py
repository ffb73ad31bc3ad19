"""Prometheus metrics of a dataward process, with the official client library.

Each long-running process (file/S3 agent, worker, sink, backup controller, embedded run) serves its
own ``/metrics`` on the address the wiring gives it (off unless configured; loopback by default),
so no label says which process it is: the scrape target does. The parts count here; the names:

- ``dataward_events_received_total``: events into this process (the agent: captured; the worker
  and the embedded run: taken for detection; the sink: messages read from Kafka)
- ``dataward_events_sent_total``: events Kafka acknowledged (agents)
- ``dataward_alerts_raised_total``; ``dataward_rows_stored_total{table}`` (sink, embedded)
- ``dataward_deadletters_total{reason}``: decode, tombstone, store_refused, kafka_refused
- ``dataward_spool_pending_events``: events in the agent's spool not yet acknowledged
- ``dataward_consumer_lag_messages{topic}``: messages behind the end of the topic (sink, worker)
- ``dataward_batch_rows{stage}``: batch sizes: publish (agent), detect, store
- ``dataward_deliveries_total{destination,status}``: alert deliveries (delivered, retry, failed, ...)
- ``dataward_backup_halted`` (1 while halted), ``dataward_backup_halts_total``
- ``dataward_kafka_reachable``: 0 while this process cannot reach Kafka
plus the client library's process and Python collectors (memory, CPU, open files, GC).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 10, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)

EVENTS_RECEIVED = Counter("dataward_events_received_total", "Events into this process")
EVENTS_SENT = Counter("dataward_events_sent_total", "Events Kafka acknowledged")
ALERTS_RAISED = Counter("dataward_alerts_raised_total", "Alert versions raised by the detectors")
ROWS_STORED = Counter("dataward_rows_stored_total", "Rows stored in ClickHouse", ["table"])
DEADLETTERS = Counter("dataward_deadletters_total", "Messages set aside with a reason", ["reason"])
SPOOL_PENDING = Gauge("dataward_spool_pending_events", "Events in the agent's spool not yet acknowledged")
CONSUMER_LAG = Gauge("dataward_consumer_lag_messages", "Messages behind the end of the topic", ["topic"])
BATCH_ROWS = Histogram("dataward_batch_rows", "Rows per batch", ["stage"], buckets=_BATCH_BUCKETS)
DELIVERIES = Counter("dataward_deliveries_total", "Alert delivery attempts by outcome", ["destination", "status"])
BACKUP_HALTED = Gauge("dataward_backup_halted", "1 while the backup is halted by an alert")
BACKUP_HALTS = Counter("dataward_backup_halts_total", "Backup halts")
KAFKA_REACHABLE = Gauge("dataward_kafka_reachable", "0 while this process cannot reach Kafka")
KAFKA_REACHABLE.set(1)


def deadletter_reason(text: str) -> str:
    """A dead letter's free-text reason as one of a few label values (bounded cardinality)."""
    low = text.lower()
    if "tombstone" in low or "empty message" in low:
        return "tombstone"
    if "store refused" in low:
        return "store_refused"
    if "kafka refused" in low:
        return "kafka_refused"
    return "decode"


def watch_spool(pending: Callable[[], int]) -> None:
    """The spool gauge reads the live count at scrape time."""
    SPOOL_PENDING.set_function(lambda: float(pending()))


def serve(host: str, port: int) -> int:
    """Serves /metrics on host:port in a daemon thread; port 0 means off. Returns the port."""
    if port <= 0:
        return 0
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_address[1])
    log.info("metrics_serving address=http://%s:%d/metrics", host, bound)
    return bound
