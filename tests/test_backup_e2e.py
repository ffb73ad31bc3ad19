"""The backup controller as a user runs it: real processes, a real S3 API (moto), chDB."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import boto3
import msgspec
import pytest

from dwcore.sinks.backup_model import MANIFEST_DIR, RunManifest
from tests.procs import run_cli, wait_for

pytestmark = pytest.mark.e2e


def versions(s3, bucket: str) -> list[dict]:
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out.extend(v for v in page.get("Versions", []) if not v["Key"].startswith(MANIFEST_DIR))
    return out


def journal_count(state: Path) -> int:
    db = state / "backup" / "journal.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT count(*) FROM versions").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill9_mid_backup_then_rerun_resumes_exactly(tmp_path: Path, moto_endpoint: str, s3_bucket) -> None:
    bucket = s3_bucket()
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:04d}.bin").write_bytes(os.urandom(2048) + str(i).encode())
    (src / "big.bin").write_bytes(os.urandom(16 * 1024 * 1024))
    state = tmp_path / "state"
    env = {**os.environ, "DATAWARD_BACKUP_CONCURRENCY": "1", "DATAWARD_BACKUP_PART_SIZE_MB": "5",
           "DATAWARD_BACKUP_MULTIPART_THRESHOLD_MB": "5", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "dataward.cli", "backup", "run", str(src), "--bucket", bucket, "--prefix", "p",
            "--endpoint-url", moto_endpoint, "--data-dir", str(state)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: journal_count(state) >= 40 or proc.poll() is not None, 60, 0.01, "some uploads")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL, "the run finished before it could be killed"
    before = len(versions(s3, bucket))
    assert 0 < before < 301
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    all_versions = versions(s3, bucket)
    # Nothing uploaded twice: exactly one version per file.
    assert len(all_versions) == 301 and len({v["Key"] for v in all_versions}) == 301
    manifests = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=MANIFEST_DIR)["Contents"]]
    assert len(manifests) == 1  # the rerun continued the killed run: one run, one manifest
    manifest = msgspec.json.decode(s3.get_object(Bucket=bucket, Key=manifests[0])["Body"].read(), type=RunManifest)
    by_key = {v["Key"]: v["VersionId"] for v in all_versions}
    assert len(manifest.files) == 301
    for entry in manifest.files:
        data = (src / entry.path).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.size == len(data)
        assert by_key[entry.key] == entry.version_id
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_embedded_attack_halts_backup_and_restore_gives_clean_files(tmp_path: Path, moto_endpoint: str,
                                                                       s3_bucket, dataward_proc) -> None:
    bucket = s3_bucket()
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    watch = tmp_path / "share"
    watch.mkdir()
    originals = {f"doc{i:03d}.txt": f"quarterly numbers {i}\n".encode() * 50 for i in range(300)}
    for name, data in originals.items():
        (watch / name).write_bytes(data)
    data_dir = tmp_path / "dw"
    proc = dataward_proc("run", "--watch", str(watch), "--data-dir", str(data_dir), "--backup-bucket", bucket,
                         "--backup-endpoint-url", moto_endpoint, "--log-level", "warning")
    proc.wait_ready(90)
    wait_for(lambda: len(versions(s3, bucket)) >= 300, 60, 0.1, "the initial backup")
    (watch / "late.txt").write_bytes(b"written while backing up continuously")
    wait_for(lambda: "late.txt" in {v["Key"] for v in versions(s3, bucket)}, 30, 0.1, "continuous upload")
    # The attack: encrypt each file in place, then rename it (ransomware's usual pattern).
    for name in originals:
        path = watch / name
        path.write_bytes(os.urandom(1100))
        path.rename(path.with_name(name + ".locked"))
    wait_for(lambda: "BACKUP HALTED" in proc.stderr(), 30, 0.1, "the halt")
    log = proc.stderr()
    latency = float(re.search(r"alert_to_halt_ms=([\d.]+)", log).group(1))
    print(f"embedded: alert->halt {latency:.1f} ms")
    # The target (p99 <= 500 ms) is measured in bench/backup.py; here only "at once, not after the burst"
    # is asserted, so a loaded CI machine cannot make it flaky.
    assert latency <= 5000, log[-2000:]
    uid = re.search(r"backup_halted incident=(\S+)", log).group(1)
    # More writes after the halt: none may reach the bucket.
    (watch / "after-halt.txt").write_bytes(b"x")
    time.sleep(1.0)  # the continuous debounce is 0.2 s: a write that could happen would have happened by now
    assert proc.stop() == 0
    keys = {v["Key"] for v in versions(s3, bucket)}
    assert "after-halt.txt" not in keys
    con = sqlite3.connect(data_dir / "backup" / "journal.sqlite")
    halted_at = msgspec.json.decode(con.execute("SELECT record FROM incidents WHERE uid=?", (uid,)).fetchone()[0])[
        "halted_at"]
    assert con.execute("SELECT count(*) FROM versions WHERE uploaded_at > ?", (halted_at,)).fetchone()[0] == 0
    assert len(versions(s3, bucket)) == con.execute("SELECT count(*) FROM versions").fetchone()[0]
    con.close()
    # A restart stays halted.
    st = run_cli("backup", "status", "--data-dir", str(data_dir))
    assert "HALTED" in st.stdout and uid in st.stdout
    # Restore before the incident: byte-identical pre-attack files.
    out = tmp_path / "restored"
    done = run_cli("backup", "restore", "", "--to", str(out), "--before-incident", uid, "--bucket", bucket,
                   "--endpoint-url", moto_endpoint, "--data-dir", str(data_dir), timeout=180)
    assert "restored" in done.stdout, done.stderr[-3000:]
    for name, data in originals.items():
        assert (out / name).read_bytes() == data
    assert not any(p.name.endswith(".locked") for p in out.iterdir())
    # ClickHouse has the runs, the manifest rows with the suspect flags, and the halt.
    q = run_cli("query", "--data-dir", str(data_dir), "--format", "json",
                "SELECT action, incident FROM backup_audit WHERE action = 'halt'")
    assert uid in q.stdout, q.stderr
    # Resume is recorded with who and when, then a run is allowed again.
    r = run_cli("backup", "resume", "--incident", uid, "--by", "oncall-jane", "--data-dir", str(data_dir))
    assert r.returncode == 0 and "oncall-jane" in r.stdout
    st = run_cli("backup", "status", "--data-dir", str(data_dir))
    assert "running" in st.stdout and "oncall-jane" in st.stdout


@pytest.mark.kafka
def test_distributed_agent_worker_attack_halts_backup_following_dw_alerts(
        tmp_path: Path, moto_endpoint: str, s3_bucket, kafka_topics, topic_prefix: str, kafka_bootstrap: str,
        dataward_proc) -> None:
    from dataward.simulate import simulate_rename

    bucket = s3_bucket()
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.txt").write_bytes(b"clean")
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix]
    worker = dataward_proc("worker", *common, "--data-dir", str(tmp_path / "worker"))
    agent = dataward_proc("agent", "file", "--watch", str(share), *common, "--data-dir", str(tmp_path / "agent"),
                          "--device", "fs-backup-1")
    data_dir = tmp_path / "dw"
    backup = dataward_proc("backup", "run", str(share), "--bucket", bucket, "--endpoint-url", moto_endpoint,
                           "--continuous", "--follow-alerts", "--data-dir", str(data_dir),
                           env={"DATAWARD_KAFKA_TOPIC_PREFIX": topic_prefix, "KAFKA_BOOTSTRAP": kafka_bootstrap})
    for proc in (worker, agent, backup):
        proc.wait_ready(90)
    wait_for(lambda: versions(s3, bucket), 30, 0.1, "the first upload")
    simulate_rename(share, 300, ".locked", show_progress=False)
    wait_for(lambda: "backup_halted incident=" in backup.stderr(), 60, 0.1, "the halt")
    log = backup.stderr()
    latency = float(re.search(r"alert_to_halt_ms=([\d.]+)", log).group(1))
    print(f"distributed: alert->halt {latency:.1f} ms (controller side)")
    # The target (p99 <= 500 ms) is measured in bench/backup.py; here only "at once, not after the burst"
    # is asserted, so a loaded CI machine cannot make it flaky.
    assert latency <= 5000, log[-2000:]
    uid = re.search(r"backup_halted incident=(\S+)", log).group(1)
    (share / "b.txt").write_bytes(b"after the halt")
    time.sleep(1.0)  # debounce 0.2 s: an upload that could happen would have happened by now
    assert "b.txt" not in {v["Key"] for v in versions(s3, bucket)}
    st = run_cli("backup", "status", "--data-dir", str(data_dir))
    assert "HALTED" in st.stdout and uid in st.stdout
