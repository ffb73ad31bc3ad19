"""S3 event-notification path: seconds from the S3 call to the alert on dw.alerts.

A real `DeleteObjects` of 200 keys against moto's S3 server (127.0.0.1, versioning on), each
deleted key's event notification produced to a Kafka topic as soon as the call returns (what a
bridge from SQS/SNS/EventBridge does; moto's own notifications carry no principal), then
`dataward agent s3 notifications` -> dw.events -> `dataward worker` -> dw.alerts. Measured: from
just before the DeleteObjects call until `s3_delete_storm` for that principal is on dw.alerts.

Baseline, same run, same worker: the same 200 delete events already parsed, produced straight to
dw.events (no S3 call, no notification agent). The difference is what the S3 call and the agent's
hop cost. Each run uses a new principal, so every run is a first burst. S3's own notification
delivery delay (AWS: typically under a second) is not part of either figure.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from rich.console import Console

from bench.common import Result, progress, render, standalone
from bench.publish import bootstrap, create_topic
from dwcore.agents.s3_notification import parse_message
from dwcore.schemas.codec import encode
from dwcore.schemas.topics import Topics
from tests.s3_records import S3Script

BENCH = "s3_latency"
KEYS = 200
RULE = "s3_delete_storm"


class Proc:
    def __init__(self, args: list[str], log: Path) -> None:
        self._log = open(log, "w")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "dataward.cli", *args], stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self.ready.set()

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class Alerts(threading.Thread):
    def __init__(self, servers: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.first: dict[str, float] = {}
        self.assigned = threading.Event()
        self.stopping = threading.Event()
        self.consumer = Consumer({"bootstrap.servers": servers, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest"})
        self.consumer.subscribe([topic], on_assign=lambda *_: self.assigned.set())

    def run(self) -> None:
        while not self.stopping.is_set():
            msg = self.consumer.poll(0.01)
            if msg is None or msg.error() is not None:
                continue
            alert = json.loads(msg.value())
            rules = {alert["rule"], *(e["name"] for e in alert.get("evidences", []))}
            if RULE in rules:
                self.first.setdefault(alert["user"], time.time())
        self.consumer.close()

    def wait(self, user: str, timeout: float = 60) -> float:
        deadline = time.time() + timeout
        while user not in self.first:
            if time.time() > deadline:
                raise TimeoutError(f"no {RULE} alert for {user} in {timeout} s")
            time.sleep(0.005)
        return self.first[user]


def run(runs: int, console: Console) -> list[Result]:
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    servers = bootstrap()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    topics = Topics.with_prefix(prefix)
    notif_topic = f"{prefix}s3.notifications"
    admin = AdminClient({"bootstrap.servers": servers})
    for name, parts in ((topics.events, 6), (topics.alerts, 1), (topics.deadletter, 1), (notif_topic, 6)):
        create_topic(admin, name, parts)
    tmp = Path(tempfile.mkdtemp(prefix="dw-bench-s3-"))
    common = ["--bootstrap", servers, "--topic-prefix", prefix]
    procs = [Proc(["worker", *common], tmp / "worker.log"),
             Proc(["agent", "s3", "notifications", "--topic", notif_topic, *common, "--data-dir", str(tmp / "agent")],
                  tmp / "agent.log")]
    alerts = Alerts(servers, topics.alerts)
    alerts.start()
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 0, "partitioner": "murmur2_random"})
    s3_lat: list[float] = []
    base_lat: list[float] = []
    try:
        for p in procs:
            if not p.ready.wait(180):
                raise RuntimeError(f"process not ready: {p.proc.args}")
        alerts.assigned.wait(30)
        with progress(console) as bar:
            task = bar.add_task("runs", total=runs * 2)
            for i in range(runs):
                bucket = f"bench-{uuid.uuid4().hex[:10]}"
                client.create_bucket(Bucket=bucket)
                client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
                keys = [f"train/part-{k:04d}.parquet" for k in range(KEYS)]
                setup = S3Script(client, bucket, f"setup{i}")
                for key in keys:
                    setup.put(key, b"x" * 64)
                kept: list[bytes] = []

                def notify(raw: bytes, kept: list[bytes] = kept) -> None:
                    producer.produce(notif_topic, value=raw)
                    kept.append(raw)

                script = S3Script(client, bucket, f"mallory{i}", notify)
                t0 = time.time()
                script.delete_objects(keys)
                producer.flush(10)
                s3_lat.append(alerts.wait(script.principal_id) - t0)
                bar.advance(task)
                # Baseline: the same deletes, already events, straight onto dw.events.
                user = f"AWS:AIDABASE{i}"
                events = [e for raw in kept for e in parse_message(
                    raw.replace(script.principal_id.encode(), user.encode()), "bench").events]
                t0 = time.time()
                for ev in events:
                    producer.produce(topics.events, key=ev.user_name.encode(), value=encode(ev))
                producer.flush(10)
                base_lat.append(alerts.wait(user) - t0)
                bar.advance(task)
    finally:
        alerts.stopping.set()
        for p in procs:
            p.stop()
        moto.stop()
    med_s3, med_base = statistics.median(s3_lat), statistics.median(base_lat)
    return [
        Result(bench=BENCH, name="events straight to dw.events -> alert", count=runs, seconds=med_base, rate=None,
               baseline=True, samples=base_lat, extra={"min_s": min(base_lat), "max_s": max(base_lat)}),
        Result(bench=BENCH, name="S3 DeleteObjects -> notification -> agent -> alert", count=runs, seconds=med_s3,
               rate=None, ratio=med_s3 / med_base if med_base else None, samples=s3_lat,
               extra={"min_s": min(s3_lat), "max_s": max(s3_lat)}),
    ]


def report(console: Console, results: list[Result]) -> None:
    render(console, f"S3 call -> {RULE} on dw.alerts ({KEYS} keys per DeleteObjects), median of runs", results,
           count_label="runs", seconds_label="median s", rate_label=None, ratio_label="vs baseline")


if __name__ == "__main__":
    standalone(__doc__, BENCH, run, report, default_events=5)
