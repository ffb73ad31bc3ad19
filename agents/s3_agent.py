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
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from dataward.config import Config
from dwcore.agents.kafka_admin import ensure_topics
from dwcore.agents.publisher import KafkaPublisher
from dwcore.agents.s3_common import Parsed
from dwcore.agents.s3_follow import LogFollower
from dwcore.agents.s3_notification import parse_message
from dwcore.agents.s3_poller import VersionPoller
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

    def __init__(self, config: Config, device: str, source: str, create_topics: bool = True) -> None:
        self.topics = Topics.with_prefix(config.kafka.topic_prefix)
        if create_topics:
            try:
                ensure_topics(config.kafka, [self.topics.events], config.kafka.partitions, timeout=5.0)
                ensure_topics(config.kafka, [self.topics.deadletter], 1, timeout=5.0)
            except (KafkaException, TimeoutError) as exc:
                log.warning("topic_check_failed error=%s action=continue_with_spool", exc)
        spool = config.spool_dir / source
        self.publisher = KafkaPublisher(config.kafka, self.topics.events, spool, device)
        self._dead = Producer({**config.kafka.client_config(), "acks": "all", "linger.ms": 20})
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
                log.warning("s3_record_rejected where=%s reason=%r", rej.where, rej.reason[:200])
            self.counters["deadlettered"] += len(parsed.rejects)
            left = self._dead.flush(10)
            if left:
                log.error("deadletter_not_delivered count=%d", left)

    def close(self) -> None:
        left = self.publisher.close()
        self._dead.flush(10)
        if left:
            log.warning("s3_agent_stopped_with_pending events=%d action=replay_on_next_start", left)


def _loop(stop: threading.Event, interval_s: float, round_: Callable[[], object], what: str) -> None:
    while not stop.is_set():
        try:
            round_()
        except Exception as exc:  # a failed listing (network, throttling) is retried next round
            log.warning("%s_round_failed error=%r action=retry_next_round", what, str(exc)[:300])
        stop.wait(interval_s)


def run_log_follower(config: Config, bucket: str, prefix: str, fmt: str, stop: threading.Event,
                     ready: Callable[[], None] | None = None, endpoint_url: str | None = None,
                     interval_s: float | None = None, start_after: str = "") -> dict[str, int]:
    output = S3Output(config, config.device, f"s3-{fmt}")
    client = s3_client(endpoint_url or config.s3.endpoint_url, config.s3.region)
    follower = LogFollower(client, bucket, prefix, fmt, config.data_dir, output, config.device, start_after)
    log.info("s3_log_follower_ready bucket=%s prefix=%s format=%s state=%s", bucket, prefix, fmt, follower.path)
    if ready:
        ready()
    try:
        _loop(stop, interval_s or config.s3.poll_interval_s, follower.poll, "s3_log_follower")
    finally:
        output.close()
    log.info("s3_log_follower_stopped %s", " ".join(f"{k}={v}" for k, v in follower.counters.items()))
    return follower.counters


def run_version_poller(config: Config, bucket: str, prefix: str, stop: threading.Event,
                       ready: Callable[[], None] | None = None, endpoint_url: str | None = None,
                       interval_s: float | None = None) -> dict[str, int]:
    output = S3Output(config, config.device, "s3-versions")
    client = s3_client(endpoint_url or config.s3.endpoint_url, config.s3.region)
    poller = VersionPoller(client, bucket, prefix, config.data_dir, output, config.device)
    poller.poll()  # the baseline (first run) or what changed while the poller was down
    log.info("s3_version_poller_ready bucket=%s prefix=%s state=%s", bucket, prefix, poller.path)
    if ready:
        ready()
    try:
        _loop(stop, interval_s or config.s3.poll_interval_s, poller.poll, "s3_version_poller")
    finally:
        output.close()
    return poller.counters


def run_notification_consumer(config: Config, topic: str, stop: threading.Event,
                              ready: Callable[[], None] | None = None, bucket: str = "",
                              prefix: str = "") -> dict[str, int]:
    """Consumes notification messages; offsets are committed only after their events are spooled."""
    output = S3Output(config, config.device, "s3-notifications")
    consumer = Consumer({
        **config.kafka.client_config(), "group.id": config.s3.notification_group,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    counters = {"messages": 0, "events": 0, "skipped": 0}
    assigned = threading.Event()
    consumer.subscribe([topic], on_assign=lambda *_: assigned.set())
    try:
        signalled = False
        while not stop.is_set():
            msgs = consumer.consume(1000, timeout=0.05)
            if assigned.is_set() and not signalled and ready:
                signalled = True
                log.info("s3_notification_consumer_ready topic=%s", topic)
                ready()
            if not msgs:
                continue
            batch = Parsed()
            for msg in msgs:
                if msg.error() is not None:
                    log.warning("notification_consume_error error=%s", msg.error())
                    continue
                counters["messages"] += 1
                where = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
                batch.extend(parse_message(msg.value() or b"", where, config.device))
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
    log.info("s3_notification_consumer_stopped %s", " ".join(f"{k}={v}" for k, v in counters.items()))
    return counters
