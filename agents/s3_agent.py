"""The live S3 sources, wired to Kafka: events through the durable publisher (spooled, keyed by
principal), rejects to the dead-letter topic with their reason and raw bytes.

- ``run_log_follower``: a log bucket/prefix (server access logs or CloudTrail), incrementally;
- ``run_version_poller``: ListObjectVersions diffs for stores without logging;
- ``run_notification_consumer``: S3 event notifications that a bridge (SQS/SNS/EventBridge to Kafka)
  puts on a topic: the seconds-fast path.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from dwcore.agents.publisher import KafkaPublisher
from dwcore.agents.s3_common import Parsed
from dwcore.agents.s3_follow import LogFollower
from dwcore.agents.s3_notification import parse_message
from dwcore.agents.s3_poller import VersionPoller
from dwcore.logfmt import kv
from dwcore.schemas.codec import encode
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.topics import Topics

log = logging.getLogger(__name__)


def s3_client(endpoint_url: str | None, region: str | None) -> Any:
    """boto3 with the standard credential chain (env, ~/.aws, instance/container role)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)


class S3Output:
    """Where parsed S3 activity goes: events to dw.events (spooled first), rejects to dw.deadletter."""

    def __init__(self, client_config: Mapping[str, str], topics: Topics, spool_dir: Path, device: str,
                 source: str) -> None:
        self.topics = topics
        self.publisher = KafkaPublisher(client_config, topics.events, spool_dir, device,
                                        deadletter_topic=topics.deadletter)
        self._dead = Producer({**client_config, "acks": "all", "linger.ms": 20})
        self.source = source
        self.counters = {"events": 0, "deadlettered": 0}

    def __call__(self, parsed: Parsed) -> None:
        self.publisher.publish(parsed.events)
        self.counters["events"] += len(parsed.events)
        if parsed.rejects:
            now = time.time_ns() // 1_000_000
            for rej in parsed.rejects:
                letter = DeadLetter(raw=rej.raw, reason=rej.reason, source=f"{self.source}:{rej.where}", time=now)
                self._dead.produce(self.topics.deadletter, value=encode(letter))
                log.warning("s3_record_rejected %s", kv(where=rej.where, reason=rej.reason[:200]))
            self.counters["deadlettered"] += len(parsed.rejects)
            left = self._dead.flush(10)
            if left:
                log.error("deadletter_not_delivered %s", kv(count=left))

    def close(self) -> None:
        left = self.publisher.close()
        self._dead.flush(10)
        if left:
            log.warning("s3_agent_stopped_with_pending %s", kv(events=left, action="replay_on_next_start"))


def _loop(stop: threading.Event, interval_s: float, round_: Callable[[], object], what: str) -> None:
    while not stop.is_set():
        try:
            round_()
        except Exception as exc:  # a failed listing (network, throttling) is retried next round
            log.warning("s3_round_failed %s", kv(source=what, error=str(exc)[:300], action="retry_next_round"))
        stop.wait(interval_s)


def run_log_follower(output: S3Output, client: Any, bucket: str, prefix: str, fmt: str, data_dir: str | Path,
                     device: str, stop: threading.Event, ready: Callable[[], None] | None = None,
                     interval_s: float = 10.0, start_after: str = "") -> dict[str, int]:
    follower = LogFollower(client, bucket, prefix, fmt, data_dir, output, device, start_after)
    log.info("s3_log_follower_ready %s", kv(bucket=bucket, prefix=prefix, format=fmt, state=follower.path))
    if ready:
        ready()
    try:
        _loop(stop, interval_s, follower.poll, "log_follower")
    finally:
        output.close()
    log.info("s3_log_follower_stopped %s", kv(**follower.counters))
    return follower.counters


def run_version_poller(output: S3Output, client: Any, bucket: str, prefix: str, data_dir: str | Path,
                       device: str, stop: threading.Event, ready: Callable[[], None] | None = None,
                       interval_s: float = 10.0) -> dict[str, int]:
    poller = VersionPoller(client, bucket, prefix, data_dir, output, device)
    try:
        poller.poll()  # the baseline (first run) or what changed while the poller was down
        log.info("s3_version_poller_ready %s", kv(bucket=bucket, prefix=prefix, state=poller.path))
        if ready:
            ready()
        stop.wait(interval_s)
        _loop(stop, interval_s, poller.poll, "version_poller")
    finally:
        output.close()
    log.info("s3_version_poller_stopped %s", kv(**poller.counters))
    return poller.counters


def run_notification_consumer(output: S3Output, consumer_config: Mapping[str, Any], topic: str, device: str,
                              stop: threading.Event, ready: Callable[[], None] | None = None, bucket: str = "",
                              prefix: str = "") -> dict[str, int]:
    """Consumes notification messages; offsets are committed only after their events are spooled."""
    consumer = Consumer({**consumer_config, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    counters = {"messages": 0, "events": 0, "skipped": 0}
    assigned = threading.Event()
    consumer.subscribe([topic], on_assign=lambda *_: assigned.set())
    try:
        signalled = False
        while not stop.is_set():
            msgs = consumer.consume(1000, timeout=0.05)
            if assigned.is_set() and not signalled:
                signalled = True
                log.info("s3_notification_consumer_ready %s", kv(topic=topic))
                if ready:
                    ready()
            if not msgs:
                continue
            batch = Parsed()
            for msg in msgs:
                if msg.error() is not None:
                    log.warning("notification_consume_error %s", kv(error=msg.error()))
                    continue
                counters["messages"] += 1
                where = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
                batch.extend(parse_message(msg.value() or b"", where, device))
            if bucket or prefix:
                kept = [e for e in batch.events if (not bucket or e.share == bucket)
                        and e.file_path.startswith(prefix)]
                counters["skipped"] += len(batch.events) - len(kept)
                batch.events = kept
            output(batch)
            counters["events"] += len(batch.events)
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
        output.close()
    log.info("s3_notification_consumer_stopped %s", kv(**counters))
    return counters
