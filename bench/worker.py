"""Kafka -> `dataward worker` (faust, batched, per-user state and rules) against a bare consumer.

The same pre-filled events topic (12 partitions, keyed by user) is read by:
- baseline: a confluent-kafka consumer loop that only decodes each message with msgspec;
- the framework's ceiling: a faust agent taking the same batches and doing nothing with them
  (bench/worker_ceiling.py): what any faust worker can reach here, whatever its body does; once
  as faust ships, once with the worker's direct hand-off of messages (stream/faust_delivery.py);
- dataward: 1, 2 and 4 `dataward worker` processes in one consumer group, from their "ready"
  line until the group's committed offsets reach the end of the topic.
Per-user ordering: every user's events sit in one partition (checked on the topic), and a
partition is owned by one worker at a time, so each user's events are processed in order.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console

from bench.agent import older_tree
from bench.common import (
    REPO,
    Result,
    chunks,
    make_workload,
    progress,
    render,
    standalone_before,
    timed_result,
    with_rate_ratios,
)
from bench.publish import bootstrap, create_topic
from dwcore.schemas.codec import encode
from dwcore.schemas.event import AccessEvent
from dwcore.schemas.topics import Topics

BENCH = "worker"
PARTITIONS = 12
WORKER_COUNTS = (1, 2, 4)


def fill(servers: str, topic: str, events: list[AccessEvent]) -> dict[str, set[int]]:
    """Produce the events keyed by user; return the partitions each user's events landed in."""
    partitions_of: dict[str, set[int]] = {}

    def delivered(err, msg) -> None:
        if err is None:
            partitions_of.setdefault(msg.key().decode(), set()).add(msg.partition())

    producer = Producer({"bootstrap.servers": servers, "linger.ms": 20, "compression.type": "lz4",
                         "partitioner": "murmur2_random", "enable.idempotence": True})
    for batch in chunks(events, 5_000):
        for ev in batch:
            while True:
                try:
                    producer.produce(topic, key=ev.user_name.encode(), value=encode(ev), on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    return partitions_of


def bare_consume(servers: str, topic: str, n: int) -> float:
    """Seconds a plain consumer needs to read and decode n messages."""
    decoder = msgspec.json.Decoder(AccessEvent)
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0
    t0 = None
    while seen < n:
        for msg in consumer.consume(2_000, timeout=1.0):
            if msg.error() is not None:
                continue
            if t0 is None:
                t0 = time.perf_counter()
            decoder.decode(msg.value())
            seen += 1
    elapsed = time.perf_counter() - (t0 or time.perf_counter())
    consumer.close()
    return elapsed


def faust_ceiling(servers: str, topic: str, n: int, direct: bool = False) -> float:
    """Seconds an empty faust agent (bench.worker_ceiling) needs from its first batch to n events."""
    out = subprocess.run([sys.executable, "-m", "bench.worker_ceiling", servers, topic, str(n),
                          *(["direct"] if direct else [])],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    found = re.search(r"ceiling: (\d+) ([\d.]+)", out.stdout + out.stderr)  # faust may log what is printed
    if found:
        return float(found.group(2)) * n / int(found.group(1))
    raise RuntimeError(f"the faust ceiling run printed no result:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def committed(admin_conf: dict[str, str], group: str, topic: str) -> int:
    consumer = Consumer({**admin_conf, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in parts)


def run_workers(servers: str, prefix: str, n_workers: int, n_events: int, workdir: Path,
                code: Path | None = None) -> float:
    """Seconds from all workers ready until the group has committed every event. ``code``: a
    directory holding another ``dwcore`` (an older commit's) to run instead of this checkout's."""
    topics = Topics.with_prefix(prefix)
    env = {**os.environ, "DATAWARD_KAFKA_PARTITIONS": str(PARTITIONS), "PYTHONUNBUFFERED": "1"}
    if code is not None:
        env["PYTHONPATH"] = f"{code}{os.pathsep}{REPO}"
    procs = []
    for i in range(n_workers):
        log = open(workdir / f"worker-{i}.log", "w")  # closed below
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "dataward.cli", "worker", "--bootstrap", servers, "--topic-prefix", prefix,
             "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=workdir), log))
    try:
        for proc, _ in procs:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "ready:" in line:  # faust may put a cursor escape before it
                    break
            else:
                raise RuntimeError(f"worker exited before ready; see {workdir}")
        t0 = time.perf_counter()
        group = f"dataward-worker-{prefix}".rstrip(".")
        while committed({"bootstrap.servers": servers}, group, topics.events) < n_events:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("workers did not finish within 600 s")
            time.sleep(0.2)
        return time.perf_counter() - t0
    finally:
        for proc, _log in procs:
            proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def run(n: int, console: Console, before: str | None = None) -> list[Result]:
    servers = bootstrap()
    admin = AdminClient({"bootstrap.servers": servers})
    events = make_workload(n, users=1_000)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-worker-") as tmp, progress(console) as bar:
        task = bar.add_task("worker runs", total=2 + len(WORKER_COUNTS) + (1 if before else 0))
        prefix = f"bw{uuid.uuid4().hex[:8]}."
        topic = Topics.with_prefix(prefix).events
        create_topic(admin, topic, PARTITIONS)
        spread = fill(servers, topic, events)
        one_partition = all(len(parts) == 1 for parts in spread.values())
        secs = bare_consume(servers, topic, n)
        results.append(timed_result(BENCH, "confluent-kafka consume + decode", n, secs, baseline=True))
        bar.advance(task)
        # The framework alone: any faust worker's ceiling on this machine.
        results.append(timed_result(BENCH, "faust take_events, empty agent (no decode, no state)", n,
                                    faust_ceiling(servers, topic, n)))
        results.append(timed_result(BENCH, "the same, with the worker's direct delivery", n,
                                    faust_ceiling(servers, topic, n, direct=True)))
        bar.advance(task)
        for count in WORKER_COUNTS:
            # A fresh prefix per run: its own consumer group and changelog, the same events.
            run_prefix = f"bw{uuid.uuid4().hex[:8]}."
            run_topic = Topics.with_prefix(run_prefix).events
            create_topic(admin, run_topic, PARTITIONS)
            fill(servers, run_topic, events)
            secs = run_workers(servers, run_prefix, count, n, Path(tmp))
            results.append(timed_result(BENCH, f"dataward worker x{count}", n, secs,
                                        extra={"users in one partition": "yes" if one_partition else "NO"}))
            bar.advance(task)
        if before:
            run_prefix = f"bw{uuid.uuid4().hex[:8]}."
            create_topic(admin, Topics.with_prefix(run_prefix).events, PARTITIONS)
            fill(servers, Topics.with_prefix(run_prefix).events, events)
            code = older_tree(before, Path(tmp), ("agents", "schemas", "detectors", "stream", "sinks"))
            # The wiring too (it sets the worker's process up), so the row is that commit's worker.
            wiring = subprocess.run(["git", "-C", str(REPO), "archive", before, "dataward"],
                                    capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(code)], input=wiring, check=True)
            secs = run_workers(servers, run_prefix, 1, n, Path(tmp), code)
            results.append(timed_result(BENCH, f"dataward worker x1, code of {before}", n, secs))
            bar.advance(task)
    return with_rate_ratios(results)


def report(console: Console, results: list[Result]) -> None:
    render(console, f"Kafka -> worker: events/s on {PARTITIONS} partitions, 1,000 users", results,
           seconds_label="seconds (ready -> all committed)",
           note="dataward worker: decode, dead-letter, per-user state in the changelog table, rules, alerts.")


if __name__ == "__main__":
    standalone_before(__doc__, BENCH, 200_000, "one worker", run, report)
