"""The distributed mode's processes, wired from the typed config: the file agent, the stream worker
and the ClickHouse sink. The embedded mode is wired beside this, in ``embedded.py``; the parts
themselves only see plain values (a client-config mapping, topic names, paths, a policy).
"""
from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from dataward import __version__
from dataward.agent_pipeline import AgentStages, watcher_class
from dataward.config import Config
from dataward.datadir import DataDirLock
from dataward.store_alarm import store_disk_full_event
from dwcore.agents.heartbeat import Heartbeater
from dwcore.agents.inotify_limits import ensure_queue_size
from dwcore.agents.kafka_admin import (
    BrokerUnreachable,
    CredentialsRefused,
    Durability,
    choose_durability,
    ensure_topics,
)
from dwcore.agents.publisher import KafkaPublisher
from dwcore.agents.reconcile import BlindGuard, Reconciler
from dwcore.agents.watcher import agent_user
from dwcore.backoff import Backoff
from dwcore.detectors.policy import Policy
from dwcore.kafkalog import HEALTH
from dwcore.logfmt import kv
from dwcore.metrics import watch_spool
from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import encode
from dwcore.schemas.topics import Topics
from dwcore.sinks.consumer_config import consumer_config
from dwcore.sinks.custody import Sealer
from dwcore.sinks.jsonl import AlertJsonlWriter
from dwcore.sinks.kafka_sink import ClickHouseSink, SinkCounters, run_sink_loop
from dwcore.sinks.query_auth import ensure_token
from dwcore.sinks.query_server import QueryServer
from dwcore.sinks.store import open_when_available

log = logging.getLogger(__name__)


def _error_text(exc: BaseException) -> str:
    """The real error: a KafkaError's own text, else the exception's message, else its type."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return str(err.str())
    return str(exc) or type(exc).__name__


def topics_of(config: Config) -> Topics:
    return Topics.with_prefix(config.kafka.topic_prefix)


def ensure_all_topics(config: Config) -> Durability:
    """The dw.* topics: events with the configured partitions (the unit of scale-out), the rest with
    one; replicated as the cluster allows (choose_durability). Returns what was chosen."""
    topics = topics_of(config)
    client = config.kafka.client_config()
    durability = choose_durability(client)
    extra = {"min.insync.replicas": str(durability.min_insync_replicas)}
    rf = durability.replication_factor
    ensure_topics(client, [topics.events], config.kafka.partitions, replication_factor=rf, topic_config=extra)
    ensure_topics(client, [topics.alerts, topics.deadletter, topics.heartbeats], 1, replication_factor=rf,
                  topic_config=extra)
    return durability


_watcher = watcher_class


def wait_for_topics(config: Config, stop: threading.Event, waiting: str) -> Durability | None:
    """ensure_all_topics, retried with backoff while no broker answers (one rate-limited line
    says so); None when stopped first. A service started before Kafka waits instead of dying."""
    HEALTH.configure(config.kafka.bootstrap, lambda: waiting)
    backoff = Backoff(1.0, 30.0)
    while not stop.is_set():
        try:
            durability = ensure_all_topics(config)
            HEALTH.reachable()
            return durability
        except CredentialsRefused:
            raise
        except BrokerUnreachable:
            HEALTH.unreachable("no broker answered")
            stop.wait(backoff.next())
    return None




def _also(first: Callable[[], None], then: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        then()

    return both


class _AlertProducer:
    """The agent's own alerts to dw.alerts and its heartbeats (best effort: the local JSONL file is
    the durable copy of alerts; a heartbeat that cannot be sent is the signal itself)."""

    def __init__(self, client: dict, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._producer = Producer({**client, "linger.ms": 5, "message.timeout.ms": 60_000})

    def send(self, alert: Alert) -> None:
        self.produce(self.topic, alert.user.encode(), encode(alert))

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        self._producer.produce(topic, key=key, value=value)
        self._producer.poll(0)

    def close(self, timeout: float = 5.0) -> None:
        left = self._producer.flush(timeout)
        if left:
            log.warning("agent_alerts_unsent %s", kv(alerts=left, topic=self.topic, kept_in="agent-alerts.jsonl"))


def run_file_agent(
    config: Config,
    watch: Sequence[str],
    stop: threading.Event,
    ready: Callable[[], None] | None = None,
    *,
    tune_inotify: bool | None = None,
    create_topics: bool = True,
    flush_timeout_s: float = 10.0,
    policy: Policy | None = None,
) -> dict[str, int]:
    """Watch directories and publish their activity durably to Kafka until ``stop`` is set; returns
    the final counters. ``ready`` is called once every root is watched. Starts even when the broker
    is down: events wait in the spool. ``policy`` (default: the configured one) drives the fast path."""
    roots = list(watch) or list(config.agent.watch)
    if not roots:
        raise ValueError("nothing to watch: pass directories or set agent.watch")
    topics = topics_of(config)
    client = config.kafka.client_config()
    started: list[KafkaPublisher | None] = [None]
    HEALTH.configure(config.kafka.bootstrap, lambda: (
        f"{started[0].pending} events spooled" if started[0] is not None else "agent starting; events will be spooled"))
    if config.agent.tune_inotify if tune_inotify is None else tune_inotify:
        ensure_queue_size()
    if create_topics:
        try:
            ensure_topics(client, [topics.events], config.kafka.partitions, timeout=5.0)
            ensure_topics(client, [topics.deadletter], 1, timeout=5.0)
            if config.response.fastpath and config.response.publish_alerts:
                ensure_topics(client, [topics.alerts], 1, timeout=5.0)
            if config.capture.heartbeat_s > 0:
                ensure_topics(client, [topics.heartbeats], 1, timeout=5.0)
        except (KafkaException, BrokerUnreachable) as exc:
            log.warning("topic_check_failed %s", kv(topic=topics.events, error=_error_text(exc),
                                                    action="continue_with_spool"))
    spool_dir = config.spool_dir
    publisher = KafkaPublisher(client, topics.events, spool_dir, config.device, deadletter_topic=topics.deadletter,
                               spool_max_bytes=config.capture.spool_max_bytes)
    started[0] = publisher
    watch_spool(lambda: publisher.pending)
    if policy is None and config.response.fastpath:
        from dwcore.detectors.policy import load_policy

        policy = load_policy(config.policy_file or None)
    alert_out = _AlertProducer(client, topics.alerts)
    stages = AgentStages(config, policy, alert_sinks=[alert_out.send] if config.response.publish_alerts else [])
    emit = stages.emit_to(publisher.publish)
    excluded = [str(spool_dir), str(Path(config.data_dir))]
    cap = config.capture
    watcher = _watcher(cap.backend)(roots, config.device, emit, exclude=excluded)

    def stats() -> tuple[int, int, int, bool]:
        c = publisher.counters
        return watcher.counters["seen"], c["spooled_pending"], c["acked"], publisher.spool_full

    beats = Heartbeater(config.device, __version__, cap.heartbeat_s, stats,
                        lambda hb: alert_out.produce(topics.heartbeats, config.device.encode(), encode(hb)))
    guard = BlindGuard(Reconciler(roots, Path(config.data_dir) / "state", config.device, emit,
                                  agent_user=agent_user(), exclude=excluded))
    if cap.rescan_on_overflow:
        watcher.on_queue_overflow = _also(watcher.on_queue_overflow, guard.overflow)  # type: ignore[method-assign]
    try:
        watcher.start()
        stages.start_side_watches(config.device, emit)
        beats.start()
        guard.start(cap.rescan_at_start)  # after the watches exist: nothing falls between rescan and live events
        log.info("file_agent_ready %s", kv(device=config.device, topic=topics.events,
                                           roots=",".join(watcher.roots), spool=spool_dir))
        if ready is not None:
            ready()
        stop.wait()
    finally:
        beats.stop()
        guard.stop(snapshot=False)
        watcher.stop()
        if cap.snapshot_at_stop:
            guard.reconciler.snapshot_all()
        stages.close()
        alert_out.close()
        left = publisher.close(flush_timeout_s)
        if left:
            log.warning("file_agent_stopped_with_pending %s",
                        kv(events=left, spool=spool_dir, action="replay_on_next_start"))
    counters = {**watcher.counters, **{f"publisher_{k}": v for k, v in publisher.counters.items()}}
    if stages.fastpath is not None:
        counters.update({f"fastpath_{k}": v for k, v in stages.fastpath.counters.items()})
    log.info("file_agent_stopped %s", kv(**counters))
    return counters


# A worker that dies (kill -9, lost host) is dropped from the group after this long without a
# heartbeat, and its partitions, with their users' state, move to the others: faust's 60 s default
# would leave an attack on those partitions unwatched for a minute.
WORKER_SESSION_TIMEOUT_S = 10.0


def _worker_settings() -> dict[str, object]:
    # The client id names the process, so `kafka-consumer-groups --describe` (and the tests) can tell
    # which worker owns which partition.
    return {"broker_client_id": f"dataward-worker-{socket.gethostname()}-{os.getpid()}",
            "broker_session_timeout": WORKER_SESSION_TIMEOUT_S}


def worker_app(config: Config, policy: Policy, ready: Callable[[], None] | None = None) -> Any:
    """The faust app of ``dataward worker``, with the cluster's full client configuration."""
    from dataward.faust_auth import faust_broker_settings
    from dataward.model_train import load_models
    from dwcore.stream.faust_app import build_app

    prefix = config.kafka.topic_prefix
    app_id = f"dataward-worker-{prefix or 'main'}".rstrip(".")
    config.faust_dir.mkdir(parents=True, exist_ok=True)
    return build_app(
        policy,
        topics_of(config),
        bootstrap=config.kafka.bootstrap,
        partitions=config.kafka.partitions,
        app_id=app_id,
        datadir=str(config.faust_dir),
        ready=ready,
        scorer=load_models(config.models_dir, policy),
        # the same credentials as every other client of the cluster (SASL/TLS)
        settings={**_worker_settings(), **faust_broker_settings(config.kafka.client_config())},
    )


def run_worker(
    config: Config, policy: Policy, loglevel: str = "info", ready: Callable[[], None] | None = None
) -> None:
    """The stream worker; runs until SIGINT/SIGTERM (faust's Worker installs the handlers)."""
    import faust

    from dataward.logs import logging_config

    # Our key=value lines on stderr, aiokafka's reconnect noise folded (faust would install its own handler).
    worker = faust.Worker(worker_app(config, policy, ready), loglevel=loglevel, quiet=True, redirect_stdouts=False,
                          logging_config=logging_config(loglevel))
    # A worker keeps its busy users' states decoded: hundreds of thousands of long-lived objects
    # that every full collection walks, with a collection every 700 allocations of the per-event
    # path. Collecting every 50,000 and leaving what start-up built out of it (name lists, policy)
    # took a worker from ~8.4k to ~11k events per CPU-second here (bench/worker.py, docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    worker.execute_from_commandline()


def run_clickhouse_sink(
    config: Config, stop: threading.Event, ready: Callable[[], None] | None = None
) -> SinkCounters:
    """Kafka events, alerts and dead letters into ClickHouse until ``stop`` is set; returns the
    final counters. With embedded chDB this process owns the directory, so it also serves the
    read-only query endpoint and writes its address for ``dataward query``."""
    topics = topics_of(config)
    # An embedded chDB directory has one owner: a second sink gets one line naming the holder.
    lock = DataDirLock(config.data_dir).acquire() if config.store_dsn.startswith("chdb://") else None
    try:
        return _run_sink(config, topics, stop, ready)
    finally:
        if lock is not None:
            lock.release()


def _run_sink(config: Config, topics: Topics, stop: threading.Event, ready: Callable[[], None] | None) -> SinkCounters:
    store = open_when_available(config.store_dsn, config.store.database, config.store.retention_days,
                                stop.wait, Backoff(0.2, 30.0).next, config.store.ttl_days)
    if store is None:
        return SinkCounters()
    server: QueryServer | None = None
    consumer: Consumer | None = None
    alert_writer = AlertJsonlWriter(config.alerts_jsonl) if config.alerts_jsonl else None
    group_id = f"{config.kafka.topic_prefix}dataward-sink"
    try:
        if store.embedded:
            token = ensure_token(config.query_token_file)
            server = QueryServer(store.reader, config.query.host, config.query.port, token=token,
                                 limits=config.query.limits()).start()
            server.write_addr_file(config.query_addr_file)
        consumer = Consumer({**consumer_config(config.kafka.client_config(), group_id),
                             "session.timeout.ms": config.kafka.session_timeout_ms})
        signalled = threading.Event()

        def signal_ready() -> None:
            if not signalled.is_set():
                signalled.set()
                if ready is not None:
                    ready()

        from confluent_kafka import Producer

        alarms = Producer({**config.kafka.client_config(), "linger.ms": 5, "enable.idempotence": True},
                          logger=logging.getLogger("dwcore.sinks.librdkafka"))

        def disk_full(message: str) -> None:
            ev = store_disk_full_event(config.device, message)
            alarms.produce(topics.events, key=ev.user_name.encode(), value=encode(ev))
            alarms.poll(0)

        sink = ClickHouseSink(store.writer, topics, consumer, stop, alert_writer,
                              batch_rows=config.store.batch_rows, flush_interval_s=config.store.flush_interval_s,
                              sealer=Sealer(store.writer, config.store.seal_interval_s), on_disk_full=disk_full)
        HEALTH.configure(config.kafka.bootstrap,
                         lambda: f"sink paused; {sink.pending_rows} messages read and not yet stored")

        def on_assign(cons: Consumer, parts: list[TopicPartition]) -> None:
            log.info("partitions_assigned %s", kv(count=len(parts)))
            sink.on_assign(cons, parts)
            signal_ready()

        def on_revoke(cons: Consumer, parts: list[TopicPartition]) -> None:
            log.info("partitions_revoked %s", kv(count=len(parts)))
            sink.on_revoke(cons, parts)

        consumer.subscribe([topics.events, topics.alerts, topics.deadletter, topics.heartbeats], on_assign=on_assign,
                           on_revoke=on_revoke, on_lost=on_revoke)
        log.info("sink_started %s", kv(store=store.label, group=group_id))
        try:
            return run_sink_loop(sink, consumer, stop, signal_ready)
        finally:
            if alarms.flush(5.0):
                log.warning("disk_full_alarm_unsent %s", kv(topic=topics.events))
    finally:
        if consumer is not None:
            consumer.close()
        if alert_writer is not None:
            alert_writer.close()
        if server is not None:
            server.stop()
        store.close()
