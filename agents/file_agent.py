"""The file agent: watch directories, publish their activity durably to Kafka."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from confluent_kafka import KafkaException

from dataward.agent_pipeline import build_stages
from dataward.config import Config
from dwcore.agents.inotify_limits import ensure_queue_size
from dwcore.agents.kafka_admin import ensure_topics
from dwcore.agents.pipeline import chain
from dwcore.agents.publisher import KafkaPublisher
from dwcore.agents.watcher import FileWatcher
from dwcore.schemas.topics import Topics

log = logging.getLogger(__name__)


def run_file_agent(
    config: Config,
    watch: Sequence[str],
    stop: threading.Event,
    ready: Callable[[], None] | None = None,
    *,
    tune_inotify: bool | None = None,
    create_topics: bool = True,
    flush_timeout_s: float = 10.0,
) -> dict[str, int]:
    """Runs until ``stop`` is set; returns the final counters. ``ready`` is called once every root
    is watched. Starts even when the broker is down: events wait in the spool."""
    roots = list(watch) or list(config.agent.watch)
    if not roots:
        raise ValueError("nothing to watch: pass directories or set agent.watch")
    topic = Topics.with_prefix(config.kafka.topic_prefix).events
    if config.agent.tune_inotify if tune_inotify is None else tune_inotify:
        ensure_queue_size()
    if create_topics:
        try:
            ensure_topics(config.kafka, [topic], config.kafka.partitions, timeout=5.0)
        except (KafkaException, TimeoutError) as exc:
            log.warning("topic_check_failed topic=%s error=%s action=continue_with_spool", topic, exc)
    spool_dir = config.spool_dir
    publisher = KafkaPublisher(config.kafka, topic, spool_dir, config.device)
    watcher = FileWatcher(roots, config.device, chain(build_stages(config), publisher.publish),
                          exclude=[str(spool_dir), str(Path(config.data_dir))])
    try:
        watcher.start()
        log.info("file_agent_ready device=%s topic=%s roots=%s spool=%s", config.device, topic,
                 ",".join(watcher.roots), spool_dir)
        if ready is not None:
            ready()
        stop.wait()
    finally:
        watcher.stop()
        left = publisher.close(flush_timeout_s)
        if left:
            log.warning("file_agent_stopped_with_pending events=%d spool=%s action=replay_on_next_start",
                        left, spool_dir)
    counters = {**watcher.counters, **{f"publisher_{k}": v for k, v in publisher.counters.items()}}
    log.info("file_agent_stopped %s", " ".join(f"{k}={v}" for k, v in counters.items()))
    return counters
