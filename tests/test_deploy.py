"""What ships in deploy/ is checked against the code, since nothing here can start systemd or call
AWS IAM: each IAM policy parses and allows exactly the S3 actions the calls of its modules need
(scanned from the source, so a new call without its permission fails here), the backup writer's
policy denies destroying or weakening the backup; each systemd unit starts an existing dataward
command with options that command has, runs as the unprivileged user with the shipped config,
and every long-running service has a unit."""
from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from dataward.cli import app
from dataward.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# boto3 call -> IAM action (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html);
# a call with VersionId= needs the *Version* action instead.
ACTIONS = {
    "put_object": "s3:PutObject", "create_multipart_upload": "s3:PutObject", "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject", "abort_multipart_upload": "s3:AbortMultipartUpload",
    "head_object": "s3:GetObject", "get_object": "s3:GetObject", "get_object_tagging": "s3:GetObjectTagging",
    "put_object_tagging": "s3:PutObjectTagging", "put_object_retention": "s3:PutObjectRetention",
    "put_object_legal_hold": "s3:PutObjectLegalHold", "list_objects_v2": "s3:ListBucket",
    "list_object_versions": "s3:ListBucketVersions",
}
VERSIONED = {"s3:GetObject": "s3:GetObjectVersion", "s3:GetObjectTagging": "s3:GetObjectVersionTagging",
             "s3:PutObjectTagging": "s3:PutObjectVersionTagging"}
POLICIES = {  # policy -> the modules whose S3 calls it serves
    "backup-writer.json": ["sinks/backup_uploader.py", "sinks/backup_controller.py", "sinks/backup_seal.py",
                           "sinks/anchor.py", "sinks/backup_s3.py"],
    "backup-restore.json": ["sinks/backup_restore.py", "sinks/backup_s3.py"],
    "s3-source-logs.json": ["agents/s3_follow.py"],
    "s3-source-poll.json": ["agents/s3_poller.py"],
}
CALL = re.compile(r"\.(\w+)\(([^()]*(?:\([^()]*\)[^()]*)*)\)", re.S)


def needed_actions(module: str) -> set[str]:
    src = (ROOT / module).read_text()
    needed = set()
    for name, args in CALL.findall(src):
        if name == "get_paginator":
            name = args.strip().strip("\"'")
        action = ACTIONS.get(name)
        if action is None:
            continue
        needed.add(VERSIONED.get(action, action) if "VersionId=" in args else action)
        if name == "put_object" and "ObjectLockMode" in args:
            needed.add("s3:PutObjectRetention")
    return needed


def statements(policy: str) -> list[dict]:
    doc = json.loads((DEPLOY / "iam" / policy).read_text())
    assert doc["Version"] == "2012-10-17"
    return doc["Statement"]


def actions(stmts: list[dict], effect: str) -> set[str]:
    out: set[str] = set()
    for s in stmts:
        if s["Effect"] == effect:
            out |= {s["Action"]} if isinstance(s["Action"], str) else set(s["Action"])
    return out


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_allows_exactly_what_the_code_calls(policy):
    stmts = statements(policy)
    needed = set().union(*(needed_actions(m) for m in POLICIES[policy]))
    assert needed, f"no S3 call found in {POLICIES[policy]}: the scan is broken"
    allowed = actions(stmts, "Allow")
    assert allowed == needed, (f"{policy}: allows {sorted(allowed - needed)} not needed, "
                               f"misses {sorted(needed - allowed)}")
    for s in stmts:
        resources = [s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]
        assert all(r.startswith("arn:aws:s3:::") and r != "arn:aws:s3:::*" for r in resources)
        assert "*" not in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
        if s["Effect"] == "Allow":  # bucket-level actions on the bucket, object-level on its objects
            on_objects = all("/" in r for r in resources)
            assert on_objects == all(not a.startswith("s3:ListBucket") for a in actions([s], "Allow")), s


def test_backup_writer_cannot_destroy_or_weaken_the_backup():
    stmts = statements("backup-writer.json")
    denied = actions(stmts, "Deny")
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention", "s3:PutBucketVersioning",
            "s3:PutLifecycleConfiguration", "s3:PutBucketObjectLockConfiguration", "s3:PutBucketPolicy"} <= denied
    assert not denied & actions(stmts, "Allow")
    assert not any(a.startswith("s3:Delete") for a in actions(statements("backup-restore.json"), "Allow"))


def _units() -> dict[str, configparser.ConfigParser]:
    units = {}
    for path in sorted((DEPLOY / "systemd").iterdir()):
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(path.read_text())
        units[path.name] = parser
    return units


def _resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The click command an argv names, and the rest of the argv."""
    cmd: click.Command = typer.main.get_command(app)
    rest = list(argv)
    while hasattr(cmd, "commands"):  # a group (typer may bring its own click classes)
        name = rest.pop(0)
        assert name in cmd.commands, f"no command {name!r} under {cmd.name}"
        cmd = cmd.commands[name]
    return cmd, rest


def _check_options(cmd: click.Command, rest: list[str]) -> dict[str, str]:
    opts = {o: p for p in cmd.params if getattr(p, "param_type_name", "") == "option" for o in p.opts}
    given: dict[str, str] = {}
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("-"):
            assert word in opts, f"{cmd.name} has no option {word}"
            if opts[word].is_flag:
                given[word] = ""
            else:
                given[word] = rest[i + 1]
                i += 1
        i += 1
    return given


SERVICES = {"agent file", "worker", "sink clickhouse", "alerts deliver", "backup run", "backup controller", "run",
            "selftest"}


def test_every_unit_runs_an_existing_command_unprivileged_with_the_shipped_config():
    units = _units()
    covered = set()
    for name, unit in units.items():
        if name.endswith(".timer"):
            target = unit["Timer"]["Unit"]
            assert target in units and units[target]["Service"]["Type"] == "oneshot"
            assert unit["Timer"]["OnCalendar"] and unit["Install"]["WantedBy"] == "timers.target"
            continue
        service = unit["Service"]
        argv = shlex.split(service["ExecStart"])
        assert argv[0] == "/opt/dataward/bin/dataward", name
        cmd, rest = _resolve(argv[1:])
        covered.add(" ".join(argv[1:len(argv) - len(rest)]))
        given = _check_options(cmd, rest)
        assert given.get("--config") == "/etc/dataward/dataward.yaml", name
        data_dir = given["--data-dir"]
        writable = {f"/var/lib/{d}" for d in service.get("StateDirectory", "").split()}
        writable |= set(service.get("ReadWritePaths", "").split())
        assert data_dir in writable, f"{name}: the data dir {data_dir} is not writable under ProtectSystem=strict"
        assert service["User"] == "dataward" and service["NoNewPrivileges"] == "true"
        assert service["ProtectSystem"] == "strict" and service["UMask"] == "0077"
        caps = set(service.get("CapabilityBoundingSet", "").split())
        assert caps <= {"CAP_DAC_READ_SEARCH"}, f"{name}: {caps}"
        env = dict(e.split("=", 1) for e in shlex.split(service.get("Environment", "")))
        cfg = load_config(DEPLOY / "dataward.yaml", env=env)  # unknown keys and variables are errors
        if "DATAWARD_AGENT_TUNE_INOTIFY" in env:
            assert cfg.agent.tune_inotify is False
    assert covered == SERVICES, f"services without a unit: {SERVICES - covered}"


def test_sysctl_file_raises_the_inotify_limits_the_docs_name():
    lines = dict(line.split(" = ") for line in (DEPLOY / "sysctl" / "90-dataward.conf").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert int(lines["fs.inotify.max_queued_events"]) >= 1_048_576
    assert int(lines["fs.inotify.max_user_watches"]) >= 524_288
