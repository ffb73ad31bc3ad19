"""Every process on a broker that demands SASL_PLAINTEXT with SCRAM-SHA-512 (scripts/kafka with
KAFKA_SASL=scram): `dataward topics create`, the file agent, the worker and the sink carry the
credentials from the config (password from a file), an attack goes agent -> worker -> alert ->
sink -> store, and a wrong password is one clear error naming the credentials."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dataward.simulate import simulate_rename
from tests.conftest import ROOT
from tests.procs import run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka]


def _free_pair() -> int:
    for base in range(19700, 19990, 4):
        busy = False
        for port in (base, base + 1):
            with socket.socket() as sock:
                busy = busy or sock.connect_ex(("127.0.0.1", port)) == 0
        if not busy:
            return base
    raise RuntimeError("no free ports for a SASL broker")


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[tuple[str, Path]]:
    """(bootstrap, client password file) of a fresh one-node SCRAM-SHA-512 broker."""
    port = _free_pair()
    # a loaded CI machine can take minutes to start a JVM
    env = {**os.environ, "KAFKA_SASL": "scram", "KAFKA_PORT": str(port), "KAFKA_START_TIMEOUT_S": "280"}
    env.pop("KAFKA_BROKERS", None)
    script = str(ROOT / "scripts" / "kafka")
    out = subprocess.run([script, "start"], capture_output=True, text=True, timeout=300, env=env)
    if out.returncode != 0:
        pytest.fail(f"scripts/kafka start (SASL) failed:\n{out.stderr}")
    cache = Path(os.environ.get("DATAWARD_CACHE") or ROOT / ".cache")
    password = cache / "kafka" / f"run-{port}" / "client.password"
    assert password.is_file(), out.stderr
    yield out.stdout.strip().splitlines()[-1], password
    subprocess.run([script, "stop"], capture_output=True, timeout=120, env=env)


def _sasl_env(password_file: Path, **extra: str) -> dict[str, str]:
    return {"DATAWARD_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DATAWARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "DATAWARD_KAFKA_SASL_USERNAME": "dataward", "DATAWARD_KAFKA_SASL_PASSWORD_FILE": str(password_file),
            **extra}


def test_attack_flows_through_a_sasl_cluster(tmp_path, sasl_broker, topic_prefix, dataward_proc):
    bootstrap, password = sasl_broker
    env = _sasl_env(password)
    common = ["--bootstrap", bootstrap, "--topic-prefix", topic_prefix]
    res = run_cli("topics", "create", *common, env=env, timeout=120)
    assert res.returncode == 0 and "topics ready" in res.stdout, res.stderr

    watched = tmp_path / "share"
    watched.mkdir()
    sink_dir = tmp_path / "sink"
    sink = dataward_proc("sink", "clickhouse", *common, "--data-dir", str(sink_dir), env=env)
    worker = dataward_proc("worker", *common, "--data-dir", str(tmp_path / "worker"), env=env)
    agent = dataward_proc("agent", "file", "--watch", str(watched), *common, "--data-dir", str(tmp_path / "agent"),
                          "--device", "sasl-fs", env=env)
    for proc in (sink, worker, agent):
        proc.wait_ready(120)
    simulate_rename(watched, 150, ".locked", show_progress=False)

    def alert_in_store():
        res = run_cli("query", "SELECT rule, severity, user FROM alerts FINAL WHERE "
                      "arrayExists(e -> tupleElement(e, 'name') = 'mass_rename', evidences)",
                      "--data-dir", str(sink_dir), "--format", "json")
        return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else None

    rows = wait_for(alert_in_store, 90, interval=1, what="the worker's mass_rename alert stored by the sink")
    assert rows[0]["severity"] in ("high", "critical")
    stored = run_cli("query", "SELECT count() AS n FROM events WHERE device = 'sasl-fs'", "--data-dir", str(sink_dir),
                     "--format", "json")
    assert json.loads(stored.stdout)[0]["n"] >= 300  # the agent's events, through SASL, in the store
    for proc in (agent, worker, sink):
        assert proc.stop() == 0
    for proc in (agent, worker, sink):  # no credential trouble on the way
        assert "refused dataward's credentials" not in proc.log_path.read_text()


def test_wrong_password_is_one_clear_error(tmp_path, sasl_broker, topic_prefix):
    bootstrap, _password = sasl_broker
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    # Both at once (each is a fresh interpreter and a SCRAM round trip): half the wall time.
    # The sink (a long-running service) must stop at once with the same reason, not retry forever.
    common = ["--bootstrap", bootstrap, "--topic-prefix", topic_prefix]
    with ThreadPoolExecutor(2) as pool:
        admin = pool.submit(run_cli, "topics", "create", *common, env=_sasl_env(wrong), timeout=120)
        sink = pool.submit(run_cli, "sink", "clickhouse", *common, "--data-dir", str(tmp_path / "s"),
                           env=_sasl_env(wrong), timeout=120)
        res, sink_res = admin.result(), sink.result()
    assert res.returncode == 2
    assert "refused the credentials" in res.stderr and "SCRAM-SHA-512" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "not-the-password" not in res.stderr + res.stdout
    assert sink_res.returncode == 2 and "refused the credentials" in sink_res.stderr, sink_res.stderr
    assert "Traceback" not in sink_res.stderr and "not-the-password" not in sink_res.stderr + sink_res.stdout
