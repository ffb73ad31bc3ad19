"""The backup controller against a real S3 API (moto's server): incremental upload, multipart,
crash recovery, halt, restore, seal."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from dwcore.schemas.alert import Alert, Severity
from dwcore.sinks.backup_controller import Controller, HaltPolicy, Hooks
from dwcore.sinks.backup_gate import Gate
from dwcore.sinks.backup_journal import Journal
from dwcore.sinks.backup_model import MANIFEST_DIR, SUSPECT_TAG, RunManifest
from dwcore.sinks.backup_restore import restore
from dwcore.sinks.backup_s3 import list_versions, make_client
from dwcore.sinks.backup_uploader import MiB, Uploader, UploadSettings
from tests.procs import run_cli

SMALL = UploadSettings(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=4)


def make_tree(root: Path) -> dict[bytes, bytes]:
    files = {
        b"train.csv": b"a,b\n1,2\n" * 100,
        b"models/model.bin": os.urandom(12 * MiB + 123),  # multipart: 3 parts of 5 MiB
        b"odd/\xff\xfe-not-utf8.txt": b"raw name",
        b"odd/[bold red]markup[/bold red].txt": b"markup name",
    }
    for rel, data in files.items():
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    return files


def versions_of(s3, bucket: str, prefix: str = "") -> list:
    return [v for v in list_versions(s3, bucket, prefix) if not v.key.startswith(MANIFEST_DIR)]


@pytest.fixture
def env(tmp_path: Path, moto_endpoint: str, s3_bucket):
    bucket = s3_bucket()
    s3 = make_client(moto_endpoint)
    journal = Journal(tmp_path / "state")
    gate = Gate(journal.marker)
    yield s3, bucket, journal, gate, tmp_path
    gate.stop_watching()
    journal.close()


def test_incremental_forever_multipart_manifest_and_restore(env) -> None:
    s3, bucket, journal, gate, tmp = env
    src = tmp / "src"
    files = make_tree(src)
    up = Uploader(s3, journal, gate, bucket, "ds", str(src), SMALL)
    up.start_run()
    stats = up.backup_tree()
    manifest = up.finish("complete")
    assert stats.uploaded == 4 and not stats.errors
    # The manifest in the bucket names every file with its hash and the version that holds it.
    body = s3.get_object(Bucket=bucket, Key=f"{MANIFEST_DIR}/ds/{up.run_id}.json")["Body"].read()
    import msgspec

    stored = msgspec.json.decode(body, type=RunManifest)
    assert stored.files == manifest.files and len(stored.files) == 4
    for entry in stored.files:
        head = s3.head_object(Bucket=bucket, Key=entry.key, VersionId=entry.version_id)
        assert head["Metadata"]["sha256"] == entry.sha256
    # Second run: nothing changed, nothing uploaded (not even after a touch: the hash decides).
    os.utime(src / "train.csv")
    up.start_run()
    assert up.backup_tree().uploaded == 0
    up.finish("complete")
    first_point = int(time.time() * 1000)
    time.sleep(0.01)
    (src / "train.csv").write_bytes(b"changed")
    up.start_run()
    stats = up.backup_tree()
    up.finish("complete")
    assert stats.uploaded == 1
    assert len(versions_of(s3, bucket, "ds/")) == 5
    # Restore as of before the change: byte-identical, non-UTF-8 name included.
    out = tmp / "restored"
    results = restore(s3, bucket, "ds", str(out), first_point, journal.version_times(bucket), journal.incidents())
    assert {r.status for r in results} == {"restored"}
    for rel, data in files.items():
        assert open(os.path.join(os.fsencode(out), rel), "rb").read() == data


def test_hash_mismatch_is_refused_not_written(env) -> None:
    s3, bucket, _journal, _gate, tmp = env
    # A version planted by someone else with a hash that does not match its content.
    s3.put_object(Bucket=bucket, Key="p/evil.txt", Body=b"tampered", Metadata={"sha256": "0" * 64})
    s3.put_object(Bucket=bucket, Key="p/../../escape.txt", Body=b"x",
                  Metadata={"sha256": hashlib.sha256(b"x").hexdigest()})
    out = tmp / "r"
    results = {r.key: r for r in restore(s3, bucket, "p", str(out), int(time.time() * 1000) + 5000, {}, [])}
    assert results["p/evil.txt"].status == "hash_mismatch"
    assert results["p/../../escape.txt"].status == "unsafe_key"
    assert not (out / "evil.txt").exists() and not (tmp / "escape.txt").exists()


def test_committed_but_unrecorded_upload_is_adopted_not_repeated(env) -> None:
    s3, bucket, journal, gate, tmp = env
    src = tmp / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello")
    sha = hashlib.sha256(b"hello").hexdigest()
    # The state a kill -9 leaves between PutObject returning and the journal recording it.
    journal.begin(bucket, "a.txt", sha, 5, 0)
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"hello", Metadata={"sha256": sha, "dw-escaped": "0"})
    up = Uploader(s3, journal, gate, bucket, "", str(src), SMALL)
    up.start_run()
    stats = up.backup_tree()
    assert stats.adopted == 1 and stats.uploaded == 0
    assert len(versions_of(s3, bucket)) == 1


def test_interrupted_multipart_resumes_from_its_last_part(env) -> None:
    s3, bucket, journal, gate, tmp = env
    src = tmp / "src"
    src.mkdir()
    data = os.urandom(11 * MiB)
    (src / "big.bin").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="big.bin",
                                           Metadata={"sha256": sha, "dw-escaped": "0"})["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload_id, PartNumber=1, Body=data[:5 * MiB])
    journal.begin(bucket, "big.bin", sha, len(data), 0)
    journal.set_pending(bucket, "big.bin", sha, len(data), upload_id, [{"PartNumber": 1, "ETag": part["ETag"]}], 0)
    sent: list[int] = []
    real = s3.upload_part

    def counting(**kw):
        sent.append(kw["PartNumber"])
        return real(**kw)

    s3.upload_part = counting
    up = Uploader(s3, journal, gate, bucket, "", str(src), SMALL)
    up.start_run()
    assert up.backup_tree().uploaded == 1
    assert sent == [2, 3]  # part 1 was not sent again
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_halt_aborts_multipart_flags_suspects_persists_and_resumes(env) -> None:
    s3, bucket, journal, gate, tmp = env
    src = tmp / "src"
    src.mkdir()
    (src / "clean.txt").write_bytes(b"clean")
    up = Uploader(s3, journal, gate, bucket, "", str(src), SMALL)
    up.start_run()
    up.backup_tree()
    first_seen = int(time.time() * 1000)
    time.sleep(0.01)
    (src / "clean.txt").write_bytes(b"encrypted!")  # uploaded after the attack's first event: suspect
    up.backup_tree()
    (src / "big.bin").write_bytes(os.urandom(30 * MiB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_file = tmp / "paused"
    hooks = Hooks(pause_url=f"http://127.0.0.1:{server.server_address[1]}/pause",
                  pause_command=f"{sys.executable} -c \"import os,pathlib; pathlib.Path('{hook_file}')"
                                f".write_text(os.environ['DATAWARD_INCIDENT'])\"",
                  resume_url=f"http://127.0.0.1:{server.server_address[1]}/resume")
    ctl = Controller(journal, gate, HaltPolicy(), s3=s3, hooks=hooks)
    # Halt while the big file's multipart upload is in flight.
    sent = threading.Event()
    real = s3.upload_part

    def slow_part(**kw):
        sent.set()
        return real(**kw)

    s3.upload_part = slow_part
    worker = threading.Thread(target=up.backup_files, args=([b"big.bin"],))
    worker.start()
    assert sent.wait(20)
    sev = Severity.CRITICAL
    incident = ctl.on_alert(Alert(uid="inc-42", title="t", rule="mass_rename", rule_uid="r", severity=sev,
                                  severity_id=sev.ocsf_id, user="mallory", first_seen=first_seen,
                                  detected_at=first_seen + 5, signal="renames", observed=100, threshold=25,
                                  window_s=10, file_count=100, paths=[str(src / "x.locked")]))
    halted_at = incident.halted_at
    worker.join(30)
    ctl.wait_after_halt()
    # No partial object, no multipart left, nothing written after the halt.
    assert "big.bin" not in {v.key for v in versions_of(s3, bucket)}
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert incident.aborted_uploads == 1
    assert all(t <= halted_at for t, _ in journal.version_times(bucket).values())
    (src / "new.txt").write_bytes(b"after halt")
    assert up.backup_files([b"new.txt"]).halted
    assert "new.txt" not in {v.key for v in versions_of(s3, bucket)}
    # The encrypted version is flagged in the journal and tagged in S3.
    suspect = [vid for vid, (_, s) in journal.version_times(bucket).items() if s == "inc-42"]
    assert len(suspect) == 1
    tags = s3.get_object_tagging(Bucket=bucket, Key="clean.txt", VersionId=suspect[0])["TagSet"]
    assert {"Key": SUSPECT_TAG, "Value": "inc-42"} in tags
    # Hooks paused the external job.
    assert hook_file.read_text() == "inc-42"
    assert [b["action"] for b in _Receiver.bodies] == ["pause"]
    # A restart stays halted.
    assert Gate(journal.marker).closed
    # Restore before the incident gives the clean bytes even though the current version is encrypted.
    results = restore(s3, bucket, "", str(tmp / "r"), first_seen - 1, journal.version_times(bucket),
                      journal.incidents())
    assert (tmp / "r" / "clean.txt").read_bytes() == b"clean" and results[0].status == "restored"
    # Resume: recorded with who and when, marker gone.
    resumed = ctl.resume("inc-42", "ops-lead")
    server.shutdown()
    assert resumed.resumed_by == "ops-lead" and resumed.resumed_at >= halted_at
    assert not journal.marker.exists() and not Gate(journal.marker).closed
    assert [b["action"] for b in _Receiver.bodies] == ["pause", "resume"]
    assert any(r[1] == "resume" and r[3] == "ops-lead" for r in journal.audit_rows())


def test_seal_makes_versions_undeletable_cli(tmp_path: Path, moto_endpoint: str, s3_bucket) -> None:
    bucket = s3_bucket(object_lock=True)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key="release/v1/model.bin", Body=b"weights")
    done = run_cli("backup", "seal", f"s3://{bucket}/release/v1", "--days", "3", "--mode", "compliance",
                   "--legal-hold", "--endpoint-url", moto_endpoint, "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "sealed" in done.stdout
    vid = s3.head_object(Bucket=bucket, Key="release/v1/model.bin")["VersionId"]
    head = s3.head_object(Bucket=bucket, Key="release/v1/model.bin", VersionId=vid)
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockLegalHoldStatus"] == "ON"
    assert head["ObjectLockRetainUntilDate"].timestamp() > time.time() + 2.9 * 86400
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="release/v1/model.bin", VersionId=vid)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    status = run_cli("backup", "status", "--data-dir", str(tmp_path / "d"))
    assert status.returncode == 0 and "running" in status.stdout
