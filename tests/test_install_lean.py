"""A file server runs the agent without the store, the models or plotting installed.

Every `dataward` process here starts with an import hook (a sitecustomize on PYTHONPATH) that
makes chDB, clickhouse-connect, pyarrow, pandas, scikit-learn, scipy and matplotlib impossible to
import, exactly as on a base install. The help texts, a real file agent and a real S3 agent must
work against the real broker (and moto); the store's commands must say which extra to install.
"""
from __future__ import annotations

import time

import boto3
import pytest
from confluent_kafka import Consumer

from tests.procs import run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka]

HEAVY = ("chdb", "clickhouse_connect", "pyarrow", "pandas", "sklearn", "scipy", "matplotlib")

HOOK = f"""
import importlib.abc, os, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            with open(os.environ["LEAN_IMPORT_LOG"], "a") as fh:
                fh.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture
def lean_env(tmp_path):
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    attempts = tmp_path / "attempts.log"
    attempts.touch()
    return {"PYTHONPATH": str(hook_dir), "LEAN_IMPORT_LOG": str(attempts)}, attempts


def _consume(bootstrap: str, topic: str, want, timeout: float = 60) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lean-{time.time_ns()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while not want(got) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
    finally:
        consumer.close()
    return got


def test_the_hook_refuses_the_heavy_modules_and_the_store_names_its_extra(lean_env, tmp_path):
    env, attempts = lean_env
    res = run_cli("agent", "inventory", str(tmp_path), "--data-dir", str(tmp_path / "d"), env=env)
    assert res.returncode == 2, res.stderr
    assert "pip install 'dataward[store]'" in res.stderr and "Traceback" not in res.stderr
    assert "clickhouse_connect" in attempts.read_text()  # the hook was in force


@pytest.mark.parametrize("args", [["--help"], ["agent", "--help"], ["agent", "file", "--help"],
                                  ["agent", "s3", "poll", "--help"], ["--version"]])
def test_help_needs_none_of_the_heavy_modules(lean_env, args):
    env, attempts = lean_env
    res = run_cli(*args, env=env)
    assert res.returncode == 0, res.stderr
    assert attempts.read_text() == ""  # not even tried


def test_file_agent_runs_on_a_base_install(lean_env, tmp_path, kafka_bootstrap, kafka_topics, topic_prefix,
                                           dataward_proc):
    env, attempts = lean_env
    share = tmp_path / "share"
    share.mkdir()
    agent = dataward_proc("agent", "file", "--watch", str(share), "--bootstrap", kafka_bootstrap,
                          "--topic-prefix", topic_prefix, "--data-dir", str(tmp_path / "a"), "--device", "lean",
                          env=env)
    agent.wait_ready(60)
    for i in range(5):
        (share / f"report-{i}.txt").write_bytes(b"quarterly numbers\n" * 50)
    got = _consume(kafka_bootstrap, kafka_topics.events,
                   lambda got: sum(b"report-" in v for v in got) >= 5)
    assert sum(b"report-" in v for v in got) >= 5, agent.stderr()
    assert agent.stop() == 0, agent.stderr()
    assert attempts.read_text() == "", attempts.read_text()
    assert "Traceback" not in agent.log_path.read_text()


def test_s3_agent_runs_on_a_base_install(lean_env, tmp_path, kafka_bootstrap, kafka_topics, topic_prefix,
                                         moto_endpoint, s3_bucket, dataward_proc):
    env, attempts = lean_env
    bucket = s3_bucket()
    poller = dataward_proc("agent", "s3", "poll", "--bucket", bucket, "--endpoint-url", moto_endpoint,
                           "--interval", "0.3", "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix,
                           "--data-dir", str(tmp_path / "s3"), "--device", "lean-s3",
                           env={**env, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    poller.wait_ready(60)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    wait_for(lambda: client.put_object(Bucket=bucket, Key="train/part-0.parquet", Body=b"x" * 100), 10)
    got = _consume(kafka_bootstrap, kafka_topics.events, lambda got: any(b"part-0.parquet" in v for v in got))
    assert any(b"part-0.parquet" in v for v in got), poller.stderr()
    assert poller.stop() == 0, poller.stderr()
    assert attempts.read_text() == "", attempts.read_text()
