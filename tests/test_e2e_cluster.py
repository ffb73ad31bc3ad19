"""A three-broker Kafka cluster (scripts/kafka with KAFKA_BROKERS=3) that loses a broker mid-burst.

While an agent publishes an attack burst and a worker and a sink consume it, one broker is killed
with SIGKILL and restarted a little later. Every event must be stored exactly once by event id,
the attack must alert as one incident, and no dataward process may need a restart.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from dataward.simulate import simulate_rename
from tests.conftest import ROOT
from tests.procs import run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka]


def _free_base_port(span: int) -> int:
    for base in range(19600, 19990, 10):
        taken = False
        for port in range(base, base + span):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    taken = True
                    break
        if not taken:
            return base
    raise RuntimeError("no free ports for a three-broker cluster")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """(bootstrap list, env for scripts/kafka) of a fresh three-broker cluster on loopback."""
    env = {**os.environ, "KAFKA_BROKERS": "3", "KAFKA_PORT": str(_free_base_port(6))}
    env.pop("KAFKA_SASL", None)
    script = str(ROOT / "scripts" / "kafka")
    out = subprocess.run([script, "start"], capture_output=True, text=True, timeout=300, env=env)
    if out.returncode != 0:
        pytest.fail(f"scripts/kafka start (3 brokers) failed:\n{out.stderr}")
    bootstrap = out.stdout.strip().splitlines()[-1]
    assert len(bootstrap.split(",")) == 3
    yield bootstrap, env
    subprocess.run([script, "stop"], capture_output=True, timeout=120, env=env)


def _query(data_dir: Path, sql: str) -> list[dict]:
    res = run_cli("query", sql, "--data-dir", str(data_dir), "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_topics_create_replicates_three_ways_on_three_brokers(cluster, topic_prefix):
    bootstrap, _ = cluster
    res = run_cli("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", topic_prefix)
    assert res.returncode == 0, res.stderr
    assert "replication factor 3, min.insync.replicas 2 (3 brokers)" in res.stdout
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"{topic_prefix}dw.events"
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    assert all(len(p.replicas) == 3 for p in meta.partitions.values())
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["min.insync.replicas"].value == "2"


def test_broker_killed_and_restarted_mid_burst_loses_and_duplicates_nothing(
    tmp_path, cluster, topic_prefix, dataward_proc
):
    bootstrap, env = cluster
    script = str(ROOT / "scripts" / "kafka")
    watched, sink_dir, agent_dir, worker_dir = (tmp_path / d for d in ("watched", "sink", "agent", "worker"))
    watched.mkdir()
    common = ["--bootstrap", bootstrap, "--topic-prefix", topic_prefix]
    assert run_cli("topics", "create", *common).returncode == 0
    sink = dataward_proc("sink", "clickhouse", *common, "--data-dir", str(sink_dir))
    worker = dataward_proc("worker", *common, "--data-dir", str(worker_dir))
    agent = dataward_proc("agent", "file", "--watch", str(watched), *common, "--data-dir", str(agent_dir),
                          "--device", "fs-cluster-1")
    for proc in (sink, worker, agent):
        proc.wait_ready(120)

    # The burst: an attack of 300 renames, with broker 2 killed a moment after it starts.
    import threading

    burst = threading.Thread(target=simulate_rename, args=(watched, 300, ".locked"),
                             kwargs={"show_progress": False})
    burst.start()
    time.sleep(0.3)  # let the burst begin, so the broker dies while events are in flight
    killed = subprocess.run([script, "kill", "2"], capture_output=True, text=True, timeout=60, env=env)
    assert killed.returncode == 0, killed.stderr
    burst.join(120)
    time.sleep(3)  # the cluster runs on two brokers for a while (min.insync.replicas=2 holds)
    restarted = subprocess.run([script, "restart", "2"], capture_output=True, text=True, timeout=120, env=env)
    assert restarted.returncode == 0, restarted.stderr

    renamed = {str(watched / "dataward-selftest" / f"sample-{i:05d}.csv.locked") for i in range(300)}

    def all_renames_stored():
        rows = _query(sink_dir, "SELECT file_new_path FROM events WHERE activity_name = 'Rename'")
        return rows if {r["file_new_path"] for r in rows} >= renamed else None

    rows = wait_for(all_renames_stored, 120, interval=1.0, what="every rename stored after the broker came back")
    assert len(rows) == 300, "a rename was stored twice"
    counts = _query(sink_dir, "SELECT count() AS n, uniqExact(uid) AS u FROM events")[0]
    assert counts["n"] == counts["u"], f"duplicate events: {counts}"

    def incidents():
        got = _query(sink_dir, "SELECT uniqExact(uid) AS n FROM alerts "
                               "WHERE arrayExists(e -> tupleElement(e, 'name') = 'mass_rename', evidences)")
        return got[0]["n"] or None

    assert wait_for(incidents, 60, interval=1.0, what="the mass_rename incident") == 1
    for proc in (agent, worker, sink):
        assert proc.proc.poll() is None, f"dataward {proc.args[0]} died when the broker did:\n{proc.stderr()}"
    for proc in (agent, worker, sink):
        assert proc.stop() == 0
