"""`dataward worker` joins a secured cluster: the faust app carries the same SASL/TLS client
configuration as every other process (the probe found it built with the broker address only)."""
from __future__ import annotations

import ssl

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from dataward.config import load_config
from dataward.distributed import worker_app
from dataward.faust_auth import KafkaAuthError, faust_broker_settings
from dwcore.detectors.policy import load_policy


@pytest.fixture(autouse=True)
def _password(monkeypatch):
    monkeypatch.setenv("DATAWARD_KAFKA_SASL_PASSWORD", "s3cret-pw")  # secrets only from env or a file


def _config(tmp_path, **kafka):
    return load_config(overrides={"data_dir": str(tmp_path), "kafka": {"bootstrap": "127.0.0.1:29093", **kafka}},
                       env={})


def test_worker_app_carries_sasl_ssl_credentials(tmp_path):
    cfg = _config(tmp_path, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="dw-worker")
    app = worker_app(cfg, load_policy())
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "dw-worker"
    assert auth["sasl_plain_password"] == "s3cret-pw"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert [str(u) for u in app.conf.broker] == ["kafka://127.0.0.1:29093"]


def test_sasl_plaintext_and_ca_file(tmp_path):
    cfg = _config(tmp_path, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u")
    auth = credentials_to_aiokafka_auth(worker_app(cfg, load_policy()).conf.broker_credentials)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["ssl_context"]) == ("SASL_PLAINTEXT", "PLAIN", None)
    # SSL with a CA file that does not exist: an error, never a silent fall-back to no TLS
    with pytest.raises(OSError):
        faust_broker_settings({"security.protocol": "SSL", "ssl.ca.location": str(tmp_path / "missing.pem")})
    with pytest.raises(KafkaAuthError, match="sasl_mechanism"):
        faust_broker_settings({"security.protocol": "SASL_SSL"})


def test_plaintext_stays_plaintext(tmp_path):
    app = worker_app(_config(tmp_path), load_policy())
    assert credentials_to_aiokafka_auth(app.conf.broker_credentials) == {"security_protocol": "PLAINTEXT"}
