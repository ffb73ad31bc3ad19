"""Agent -> Kafka: KafkaPublisher (disk spool + producer) against a bare confluent-kafka Producer.

Both produce the same events, keyed by user, to a fresh topic each, with the same producer
settings (acks=all, idempotence, lz4, linger.ms=20, murmur2_random). The publisher also encodes
each event and appends every batch to its spool with one fsync; the baseline gets the bytes
already encoded and keeps nothing on disk. "acked" is the time until the last delivery report.
"""
from __future__ import annotations

import gc
import logging
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console

from bench.common import (
    REPO,
    Result,
    chunks,
    make_workload,
    progress,
    render,
    standalone,
    timed_result,
    with_rate_ratios,
)
from dataward.config import KafkaConfig
from dwcore.agents.publisher import PRODUCER_DEFAULTS, KafkaPublisher
from dwcore.schemas.codec import encode

log = logging.getLogger("bench.publish")

BENCH = "publish"
PUBLISH_BATCH = 1_000  # the file watcher hands the publisher batches of up to 1,000 events
MIB = 1024 * 1024


def bootstrap() -> str:
    """KAFKA_BOOTSTRAP if set, else the project's test broker (started if need be)."""
    env = os.environ.get("KAFKA_BOOTSTRAP")
    if env:
        return env
    out = subprocess.run([str(REPO / "scripts" / "kafka"), "start"], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"scripts/kafka start failed ({out.stderr.strip()}); "
                           "set KAFKA_BOOTSTRAP to a running broker, or KAFKA_PORT for the script")
    return out.stdout.strip().splitlines()[-1]


def create_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=30)
    futures[topic].result(timeout=60)


def run_baseline(conf: dict, topic: str, records: list[tuple[bytes, bytes]], console: Console) -> tuple[float, float]:
    """Returns (seconds until the last produce returned, seconds until every delivery was acked)."""
    producer = Producer(conf)
    delivered = failed = 0

    def on_delivery(err: KafkaError | None, _msg: Message | None) -> None:
        nonlocal delivered, failed
        if err is None:
            delivered += 1
        else:
            failed += 1

    produce, poll = producer.produce, producer.poll
    # Warm this instance (connection, producer id, broker JIT) outside the timing, like the publisher.
    for key, value in records[:PUBLISH_BATCH]:
        produce(topic, value=value, key=key)
    if producer.flush(30):
        raise RuntimeError("baseline warm-up was not delivered")
    gc.collect()
    with progress(console) as prog:
        task = prog.add_task("raw Producer", total=len(records))
        t0 = time.perf_counter()
        for i, (key, value) in enumerate(records):
            while True:
                try:
                    produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    poll(0.05)  # local queue full: serve delivery reports, as the publisher does
            if i % PUBLISH_BATCH == PUBLISH_BATCH - 1:
                poll(0)
                prog.update(task, completed=i + 1)
        enqueued = time.perf_counter() - t0
        left = producer.flush(120)
        acked = time.perf_counter() - t0
    if left or failed or delivered != len(records):
        raise RuntimeError(f"baseline: delivered={delivered} failed={failed} left={left} of {len(records)}")
    return enqueued, acked


def run_publisher(kafka: KafkaConfig, topic: str, events: list, spool: Path, console: Console) -> tuple[float, float]:
    pub = KafkaPublisher(kafka.client_config(), topic, spool, "bench", deadletter_topic=f"{topic}.deadletter")
    try:
        pub.publish(events[:PUBLISH_BATCH])  # warm-up, as for the baseline
        if pub.flush(30):
            raise RuntimeError("publisher warm-up was not delivered")
        warm = pub.counters["acked"]
        gc.collect()
        with progress(console) as prog:
            task = prog.add_task("KafkaPublisher", total=len(events))
            t0 = time.perf_counter()
            for batch in chunks(events, PUBLISH_BATCH):
                pub.publish(batch)
                prog.advance(task, len(batch))
            enqueued = time.perf_counter() - t0
            left = pub.flush(120)
            acked = time.perf_counter() - t0
        counters = pub.counters
    finally:
        pub.close(10)
    if left or counters["acked"] - warm != len(events):
        raise RuntimeError(f"publisher: acked={counters['acked']} left={left} of {len(events)} {counters}")
    return enqueued, acked


def run(events: int, console: Console) -> list[Result]:
    kafka = KafkaConfig(bootstrap=bootstrap())
    workload = make_workload(events)
    t0 = time.perf_counter()
    records = [(e.user_name.encode(), encode(e)) for e in workload]
    encode_s = time.perf_counter() - t0
    mib = sum(len(k) + len(v) for k, v in records) / MIB
    conf = {**kafka.client_config(), **PRODUCER_DEFAULTS}
    admin = AdminClient(kafka.client_config())
    run_id = uuid.uuid4().hex[:8]
    base_topic, pub_topic = f"bench-raw-{run_id}", f"bench-publisher-{run_id}"
    for topic in (base_topic, pub_topic):
        create_topic(admin, topic, kafka.partitions)

    try:
        base_enq, base_ack = run_baseline(conf, base_topic, records, console)
        with tempfile.TemporaryDirectory(prefix="dw-bench-spool-") as spool:
            pub_enq, pub_ack = run_publisher(kafka, pub_topic, workload, Path(spool), console)
    finally:
        # The broker may be shared: leave no benchmark topics behind.
        for topic, future in admin.delete_topics([base_topic, pub_topic], operation_timeout=30).items():
            try:
                future.result(timeout=60)
            except Exception as exc:  # clean-up is best effort
                log.warning("topic_delete_failed topic=%s error=%s", topic, exc)

    def extra(enq: float, ack: float) -> dict[str, float | int | str]:
        return {"MiB/s": mib / ack, "last produce s": enq}

    results = [
        timed_result(BENCH, "raw Producer (pre-encoded, no spool)", len(records), base_ack,
                     baseline=True, extra=extra(base_enq, base_ack)),
        timed_result(BENCH, "KafkaPublisher (encode+spool+produce)", len(workload), pub_ack,
                     extra=extra(pub_enq, pub_ack)),
        timed_result(BENCH, "msgspec encode alone (info)", len(workload), encode_s,
                     extra={"MiB/s": mib / encode_s}),
    ]
    return with_rate_ratios(results)


def report(console: Console, results: list[Result]) -> None:
    render(console, "Publish: agent -> Kafka (rate = events acked per second)", results,
           seconds_label="seconds to all acked",
           note=f"{results[0].count:,} events, {PUBLISH_BATCH:,} per publish call; acks=all, lz4, linger.ms=20, "
                "idempotent; a fresh 6-partition topic each")


def main() -> None:
    standalone(__doc__, BENCH, run, report)


if __name__ == "__main__":
    main()
