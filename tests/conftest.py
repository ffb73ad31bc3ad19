"""Shared fixtures. Kafka is real: KAFKA_BOOTSTRAP if set, else a testcontainers broker when a
Docker engine answers, else the project's own broker (scripts/kafka). Each test gets fresh topics
through a unique topic prefix, so tests never see each other's messages."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    script = ROOT / "scripts" / "kafka"
    started = subprocess.run([str(script), "status"], capture_output=True).returncode != 0
    out = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(f"scripts/kafka start failed:\n{out.stderr}")
    bootstrap = out.stdout.strip().splitlines()[-1]
    os.environ["KAFKA_BOOTSTRAP"] = bootstrap  # subprocesses started by tests inherit it
    yield bootstrap
    if started:
        subprocess.run([str(script), "stop"], capture_output=True, timeout=60)
        os.environ.pop("KAFKA_BOOTSTRAP", None)


@pytest.fixture
def topic_prefix(kafka_bootstrap: str) -> str:
    """A unique prefix: Topics.with_prefix(prefix) names this test's own topics."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_topics(kafka_bootstrap: str, topic_prefix: str):
    """Creates this test's dw.* topics (6 partitions for events, like production) and returns Topics."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from dwcore.schemas.topics import Topics

    topics = Topics.with_prefix(topic_prefix)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    wanted = [
        NewTopic(topics.events, num_partitions=6, replication_factor=1),
        NewTopic(topics.alerts, num_partitions=1, replication_factor=1),
        NewTopic(topics.deadletter, num_partitions=1, replication_factor=1),
        NewTopic(topics.heartbeats, num_partitions=1, replication_factor=1),
    ]
    for fut in admin.create_topics(wanted, operation_timeout=30).values():
        fut.result(timeout=30)
    return topics


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API: moto's server on 127.0.0.1 (a fresh process per test session). Dummy
    credentials are put in the environment so boto3 (and subprocesses) sign requests without AWS."""
    import sys
    import time
    import urllib.request

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start:\n{log.read_text()}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def s3_bucket(moto_endpoint: str):
    """Factory: a fresh bucket on the moto server, versioned (and with object lock when asked)."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")

    def make(object_lock: bool = False, versioning: bool = True) -> str:
        name = f"t{uuid.uuid4().hex[:12]}"
        if object_lock:
            client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            client.create_bucket(Bucket=name)
        if versioning and not object_lock:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    return make


@pytest.fixture
def dataward_proc(tmp_path: Path):
    """Factory: start `dataward ARGS...` as a process; all are stopped (SIGINT) at teardown."""
    from tests.procs import DatawardProcess

    started: list[DatawardProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> DatawardProcess:
        proc = DatawardProcess(list(args), tmp_path / f"{args[0]}-{len(started)}.log", env)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def receiver():
    """Factory: a real HTTP receiver on 127.0.0.1 (tests/receivers.py); stopped at teardown."""
    from tests.receivers import Receiver

    started: list[Receiver] = []

    def make(respond=None) -> Receiver:
        rec = Receiver(respond) if respond else Receiver()
        started.append(rec.start())
        return rec

    yield make
    for rec in started:
        rec.stop()
