"""compose.yaml, checked without a Docker engine (none runs where dataward is developed): every
service is consistent with the CLI, the config reference, the Dockerfile and itself."""
from __future__ import annotations

import re
import shlex
import tomllib

import pytest
import yaml

from dataward.config import load_config
from tests.conftest import ROOT
from tests.procs import run_cli

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict = COMPOSE["services"]
DATAWARD = {name: svc for name, svc in SERVICES.items() if svc.get("image") == "dataward:local"}


def _dataward_args(svc: dict) -> list[str]:
    """The arguments the service passes to `dataward`, from command or an `exec dataward ...` shell."""
    if "entrypoint" in svc:
        script = svc["entrypoint"][-1]
        found = re.search(r"exec dataward (.*)$", script)
        assert found, f"entrypoint does not exec dataward: {script}"
        return shlex.split(found.group(1))
    return list(svc["command"])


def _subcommand(args: list[str]) -> list[str]:
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    # positional arguments (directories) follow the subcommand; keep only known command words
    return words[:2] if words[:1] in (["agent"], ["sink"], ["topics"], ["backup"], ["simulate"]) else words[:1]


def test_infrastructure_and_every_dataward_service_is_there():
    assert {"kafka", "clickhouse", "minio", "minio-init"} <= set(SERVICES)
    assert {"topics", "agent", "worker", "sink", "backup"} <= set(DATAWARD)


@pytest.mark.parametrize("name", sorted(DATAWARD))
def test_each_service_runs_a_real_command(name):
    words = _subcommand(_dataward_args(DATAWARD[name]))
    res = run_cli(*words, "--help")
    assert res.returncode == 0, f"{name}: dataward {' '.join(words)} --help failed:\n{res.stderr}"


def test_images_are_pinned_and_ports_bind_to_loopback():
    for name, svc in SERVICES.items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is published beyond loopback"


def test_environment_and_mounted_config_are_valid_configuration():
    config_file = ROOT / "deploy" / "dataward.yaml"
    for name, svc in DATAWARD.items():
        env = {k: str(v) for k, v in svc.get("environment", {}).items()}
        assert env.get("DATAWARD_CONFIG") == "/etc/dataward/dataward.yaml", name
        mounts = [str(v) for v in svc.get("volumes", [])]
        assert "./deploy/dataward.yaml:/etc/dataward/dataward.yaml:ro" in mounts, name
        # the same variables against the real file: unknown DATAWARD_* names would be an error
        env["DATAWARD_CONFIG"] = str(config_file)
        cfg = load_config(env=env)
        assert cfg.kafka.bootstrap == "kafka:9092"
    cfg = load_config(config_file, env={})
    assert cfg.backup.bucket in cfg.s3.protected_buckets, "the backup bucket is watched strictly"
    assert "minio:9000" in cfg.backup.endpoint_url


def test_volumes_secrets_and_dependencies_resolve():
    declared_volumes = set(COMPOSE["volumes"])
    declared_secrets = set(COMPOSE["secrets"])
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                # files the repo ships must exist; ./watched and ./secrets are made by the user (docs/deploy.md)
                if source.startswith("./deploy/"):
                    assert (ROOT / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared_volumes, f"{name}: undeclared volume {source}"
        for secret in svc.get("secrets", []):
            assert secret in declared_secrets, f"{name}: undeclared secret {secret}"
        for dep in svc.get("depends_on", {}):
            assert dep in SERVICES, f"{name}: depends on unknown service {dep}"
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")


def test_the_image_contains_every_package_dataward_installs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in {d.split("/")[0] for d in package_dirs.values()} | {"dataward"}:
        assert f"COPY {folder} {folder}" in dockerfile, f"Dockerfile does not copy {folder}/"
    assert "USER dataward" in dockerfile
