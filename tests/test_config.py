from __future__ import annotations

import pytest

from dataward.config import ConfigError, load_config, read_secret


def test_precedence_defaults_file_env_flags(tmp_path):
    cfg_file = tmp_path / "dw.yaml"
    cfg_file.write_text("data_dir: /srv/dw\nkafka:\n  bootstrap: file:9092\n  partitions: 12\n")
    cfg = load_config(cfg_file, env={})
    assert (cfg.data_dir, cfg.kafka.bootstrap, cfg.kafka.partitions) == ("/srv/dw", "file:9092", 12)
    cfg = load_config(cfg_file, env={"KAFKA_BOOTSTRAP": "env:9092", "DATAWARD_STORE_BATCH_ROWS": "500"})
    assert (cfg.kafka.bootstrap, cfg.store.batch_rows) == ("env:9092", 500)
    cfg = load_config(cfg_file, overrides={"kafka": {"bootstrap": "flag:9092"}}, env={"KAFKA_BOOTSTRAP": "env:9092"})
    assert cfg.kafka.bootstrap == "flag:9092"


def test_embedded_store_is_chdb_in_data_dir_unless_url_given(tmp_path):
    cfg = load_config(env={}, overrides={"data_dir": str(tmp_path)})
    assert cfg.store_dsn == f"chdb://{tmp_path / 'chdb'}"
    cfg = load_config(env={"CLICKHOUSE_URL": "http://ch:8123"})
    assert cfg.store_dsn == "http://ch:8123"


def test_unknown_keys_are_errors_not_silent_defaults(tmp_path):
    cfg_file = tmp_path / "dw.yaml"
    cfg_file.write_text("kafka:\n  bootstrapp: typo:9092\n")
    with pytest.raises(ConfigError, match="bootstrapp"):
        load_config(cfg_file, env={})


def test_secrets_come_from_env_or_file_never_yaml(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    monkeypatch.delenv("DATAWARD_KAFKA_SASL_PASSWORD", raising=False)
    monkeypatch.setenv("DATAWARD_KAFKA_SASL_PASSWORD_FILE", str(secret))
    assert read_secret("DATAWARD_KAFKA_SASL_PASSWORD") == "s3cret"
    monkeypatch.setenv("DATAWARD_KAFKA_SASL_PASSWORD", "fromenv")
    assert read_secret("DATAWARD_KAFKA_SASL_PASSWORD") == "fromenv"
    cfg_file = tmp_path / "dw.yaml"
    cfg_file.write_text("kafka:\n  sasl_password: nope\n")
    with pytest.raises(ConfigError):
        load_config(cfg_file, env={})
