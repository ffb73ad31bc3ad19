"""Kafka -> `dataward worker` (batched, per-user state and rules) against a bare consumer.

The same pre-filled events topic (12 partitions, 1,000 users, keyed by user) is read by:
- baseline: a confluent-kafka consumer loop that only decodes each message with msgspec;
- faust count-only: a faust processor that only counts (faust's own ceiling; the worker ran on
  faust's stream until this showed where its time went);
- detection alone: the worker's batch core (decode, dead letters, per-user state, rules) in this
  process over the same messages, no Kafka: the ceiling the detectors set;
- dataward: 1, 2 and 4 `dataward worker` processes in one consumer group, from their "ready"
  line until the group's committed offsets reach the end of the topic.
Every row also gives the CPU seconds it used (the worker processes' own, read from /proc), since
on a shared machine wall-clock rates move with the load; the load average is in the table.
Per-user ordering: every user's events sit in one partition (checked on the topic), and a
partition is owned by one worker at a time, so each user's events are processed in order.
"""
from __future__ import annotations

import json
import os
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

from bench.common import (
    Result,
    chunks,
    make_workload,
    progress,
    render,
    standalone,
    timed_result,
    with_rate_ratios,
)
from bench.publish import bootstrap, create_topic
from dwcore.detectors.policy import load_policy
from dwcore.schemas.codec import encode
from dwcore.schemas.event import AccessEvent
from dwcore.schemas.topics import Topics
from dwcore.stream.batch_worker import BATCH_MAX
from dwcore.stream.processing import RawMessage, decode_batch, detect, prepare

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


FAUST_EVENTS_MAX = 20_000  # faust's count-only row reads at most this many (it is slow)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def load() -> float:
    return round(os.getloadavg()[0], 1)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def bare_consume(servers: str, topic: str, n: int) -> tuple[float, float]:
    """(seconds, CPU seconds) a plain consumer needs to read and decode n messages."""
    decoder = msgspec.json.Decoder(AccessEvent)
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0
    t0 = cpu0 = None
    while seen < n:
        for msg in consumer.consume(2_000, timeout=1.0):
            if msg.error() is not None:
                continue
            if t0 is None:
                t0, cpu0 = time.perf_counter(), time.process_time()
            decoder.decode(msg.value())
            seen += 1
    elapsed = time.perf_counter() - (t0 or time.perf_counter())
    cpu = time.process_time() - (cpu0 or time.process_time())
    consumer.close()
    return elapsed, cpu


def faust_count(servers: str, topic: str, n: int) -> tuple[int, float, float]:
    """(events, seconds, CPU seconds) of a faust processor that only counts, in its own process."""
    out = subprocess.run([sys.executable, "-m", "bench.faust_count", "--bootstrap", servers, "--topic", topic,
                          "--events", str(n), "--partitions", str(PARTITIONS)],
                         capture_output=True, text=True, timeout=900)
    for line in reversed(out.stdout.splitlines()):
        if "{" in line:  # faust may put a cursor escape before it
            got = json.loads(line[line.index("{"):])
            return got["events"], got["seconds"], got["cpu"]
    raise RuntimeError(f"faust count-only run failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n"
                       f"{out.stderr[-3000:]}")


def detect_alone(events: list[AccessEvent]) -> tuple[float, float, int]:
    """(seconds, CPU seconds, alerts) of the batch core over the encoded events, no Kafka."""
    policy = load_policy()
    prepare(policy)
    raw = [RawMessage(ev.user_name.encode(), encode(ev), "bench") for ev in events]
    state: dict[str, bytes] = {}
    alerts = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for batch in chunks(raw, BATCH_MAX):
        decoded = decode_batch(batch, now_ms=0)
        alerts += len(detect(state, decoded.events, policy))
    return time.perf_counter() - t0, time.process_time() - cpu0, alerts


def committed(admin_conf: dict[str, str], group: str, topic: str) -> int:
    consumer = Consumer({**admin_conf, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in parts)


def run_workers(servers: str, prefix: str, n_workers: int, n_events: int, workdir: Path) -> tuple[float, float]:
    """(seconds, CPU seconds of the workers) from all workers ready until the group has committed
    every event."""
    topics = Topics.with_prefix(prefix)
    env = {**os.environ, "DATAWARD_KAFKA_PARTITIONS": str(PARTITIONS), "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(n_workers):
        log = open(workdir / f"worker-{prefix}{i}.log", "w")  # closed below
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "dataward.cli", "worker", "--bootstrap", servers, "--topic-prefix", prefix,
             "--data-dir", str(workdir / f"{prefix}{i}"), "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=workdir), log))
    try:
        for proc, _ in procs:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "ready:" in line:
                    break
            else:
                raise RuntimeError(f"worker exited before ready; see {workdir}")
        t0 = time.perf_counter()
        cpu0 = sum(proc_cpu(proc.pid) for proc, _ in procs)
        group = f"dataward-worker-{prefix}".rstrip(".")
        while committed({"bootstrap.servers": servers}, group, topics.events) < n_events:
            if time.perf_counter() - t0 > 900:
                raise RuntimeError("workers did not finish within 900 s")
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        return elapsed, sum(proc_cpu(proc.pid) for proc, _ in procs) - cpu0
    finally:
        for proc, _log in procs:
            proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _extra(cpu: float, count: int, **more: str | float | int) -> dict[str, str | float | int]:
    return {"CPU s": round(cpu, 2), "CPU µs/event": round(cpu / count * 1e6, 1), "load": load(), **more}


def run(n: int, console: Console) -> list[Result]:
    servers = bootstrap()
    admin = AdminClient({"bootstrap.servers": servers})
    events = make_workload(n, users=1_000)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-worker-") as tmp, progress(console) as bar:
        task = bar.add_task("worker runs", total=3 + len(WORKER_COUNTS))
        prefix = f"bw{uuid.uuid4().hex[:8]}."
        topic = Topics.with_prefix(prefix).events
        create_topic(admin, topic, PARTITIONS)
        spread = fill(servers, topic, events)
        one_partition = all(len(parts) == 1 for parts in spread.values())
        secs, cpu = bare_consume(servers, topic, n)
        results.append(timed_result(BENCH, "confluent-kafka consume + decode", n, secs, baseline=True,
                                    extra=_extra(cpu, n)))
        bar.advance(task)
        count, secs, cpu = faust_count(servers, topic, min(n, FAUST_EVENTS_MAX))
        results.append(timed_result(BENCH, "faust processor, count only", count, secs, extra=_extra(cpu, count)))
        bar.advance(task)
        secs, cpu, alerts = detect_alone(events)
        results.append(timed_result(BENCH, "batch core alone (no Kafka)", n, secs,
                                    extra=_extra(cpu, n, alerts=alerts)))
        bar.advance(task)
        for workers in WORKER_COUNTS:
            # A fresh prefix per run: its own consumer group and changelog, the same events.
            run_prefix = f"bw{uuid.uuid4().hex[:8]}."
            run_topic = Topics.with_prefix(run_prefix).events
            create_topic(admin, run_topic, PARTITIONS)
            fill(servers, run_topic, events)
            secs, cpu = run_workers(servers, run_prefix, workers, n, Path(tmp))
            results.append(timed_result(BENCH, f"dataward worker x{workers}", n, secs,
                                        extra=_extra(cpu, n, **{"users in one partition":
                                                                "yes" if one_partition else "NO"})))
            bar.advance(task)
    return with_rate_ratios(results)


def report(console: Console, results: list[Result]) -> None:
    render(console, f"Kafka -> worker: events/s on {PARTITIONS} partitions, 1,000 users", results,
           seconds_label="seconds",
           note="worker rows: from every worker ready until the group committed the last offset; decode, "
                "dead letters, per-user state (changelog per batch), rules, alerts. CPU: the process(es) "
                "measured, over the same span.")


if __name__ == "__main__":
    standalone(__doc__, BENCH, run, report, default_events=200_000)
