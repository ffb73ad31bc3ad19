"""`dataward worker` joins a secured cluster: its consumer and producer carry the same SASL/TLS
client configuration as every other process (a probe once found the worker built with the broker
address only)."""
from __future__ import annotations

import pytest

from dataward.config import load_config
from dataward.distributed import build_worker, state_changelog, worker_group
from dwcore.detectors.policy import load_policy


@pytest.fixture(autouse=True)
def _password(monkeypatch):
    monkeypatch.setenv("DATAWARD_KAFKA_SASL_PASSWORD", "s3cret-pw")  # secrets only from env or a file


def _config(tmp_path, **kafka):
    return load_config(overrides={"data_dir": str(tmp_path), "kafka": {"bootstrap": "127.0.0.1:29093", **kafka}},
                       env={})


def _worker(cfg):
    return build_worker(cfg, load_policy(), changelog=state_changelog(cfg))


def test_worker_clients_carry_sasl_ssl_credentials(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used before a connection\n")
    cfg = _config(tmp_path, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="dw-worker",
                  ssl_ca_file=str(ca))
    worker = _worker(cfg)
    for conf in (worker.consumer_config(), worker.producer_config()):
        assert conf["bootstrap.servers"] == "127.0.0.1:29093"
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert conf["sasl.username"] == "dw-worker"
        assert conf["sasl.password"] == "s3cret-pw"
        assert conf["ssl.ca.location"] == str(ca)
    # The state recovery reads the changelog with the same credentials.
    assert worker.state._client["sasl.password"] == "s3cret-pw"


def test_worker_group_and_changelog_names_follow_the_prefix(tmp_path):
    cfg = _config(tmp_path, topic_prefix="t1.")
    worker = _worker(cfg)
    assert worker_group(cfg) == "dataward-worker-t1"
    assert worker.consumer_config()["group.id"] == "dataward-worker-t1"
    # The name faust's table used, so state written before the batch worker is recovered.
    assert worker.settings.changelog == "dataward-worker-t1-user-state-changelog"
    assert worker_group(_config(tmp_path)) == "dataward-worker-main"


def test_plaintext_stays_plaintext(tmp_path):
    conf = _worker(_config(tmp_path)).consumer_config()
    assert conf["security.protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("sasl.", "ssl.")) for k in conf)
