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


def test_mistyped_environment_variable_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="DATAWARD_KAFKA_BOOTSTRAPP"):
        load_config(env={"DATAWARD_KAFKA_BOOTSTRAPP": "typo:9092"})
    with pytest.raises(ConfigError, match="DATAWARD_NOSUCHSECTION_X"):
        load_config(env={"DATAWARD_NOSUCHSECTION_X": "1"})


def test_secrets_and_non_config_variables_are_not_mistaken_for_typos():
    cfg = load_config(env={"DATAWARD_KAFKA_SASL_PASSWORD": "s3cret", "DATAWARD_CACHE": "/tmp/c",
                           "DATAWARD_ALERTS_ONCALL_SECRET_FILE": "/run/secret", "DATAWARD_DATA_DIR": "/srv/dw"})
    assert cfg.data_dir == "/srv/dw"


def test_config_reference_is_generated_from_the_code():
    """docs/config.md lists every key with its default and variable; it must match the code."""
    from dataward.config_reference import DOC, render

    text = render()
    assert DOC.read_text() == text, "run: python -m dataward.config_reference"
    for key in ("`kafka.bootstrap`", "`DATAWARD_STORE_BATCH_ROWS`", "`store.retention_days`"):
        assert key in text


def test_version_flag_prints_the_version():
    from dataward import __version__
    from tests.procs import run_cli

    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"dataward {__version__}"
