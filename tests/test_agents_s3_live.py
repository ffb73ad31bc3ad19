"""The live S3 sources against moto's real S3 API (no broker): following a log bucket with its
read position in the data dir, and the version poller's diff of ListObjectVersions."""
from __future__ import annotations

import boto3

from dwcore.agents.s3_common import Parsed
from dwcore.agents.s3_follow import LogFollower
from dwcore.agents.s3_poller import VersionPoller
from dwcore.schemas.event import Activity, Attribution
from tests.s3_records import S3Script, cloudtrail_file


def _client(moto_endpoint):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def test_log_follower_reads_each_object_once_and_remembers_across_restarts(moto_endpoint, s3_bucket, tmp_path):
    client = _client(moto_endpoint)
    data, logs = s3_bucket(), s3_bucket(versioning=False)
    script = S3Script(client, data, "mallory")
    for i in range(3):
        script.put(f"train/part-{i}.parquet", b"x" * 10)
    script.delete_objects([f"train/part-{i}.parquet" for i in range(3)])
    lines = script.log_lines
    client.put_object(Bucket=logs, Key="logs/2026-11-28-07-00-00-A1", Body="\n".join(lines[:3]).encode())
    # The second object has one truncated line among good ones.
    client.put_object(Bucket=logs, Key="logs/2026-11-28-07-01-00-B2",
                      Body=("\n".join(lines[3:]) + "\n" + lines[0][:80] + "\n").encode())
    client.put_object(Bucket=logs, Key="other/2026-11-28-07-01-00-C3", Body=b"not a log line")
    got: list[Parsed] = []
    follower = LogFollower(client, logs, "logs/", "access-log", tmp_path, got.append)
    assert follower.poll() == 2
    events = [e for p in got for e in p.events]
    assert [e.s3_operation for e in events] == ["REST.PUT.OBJECT"] * 3 + ["REST.POST.MULTI_OBJECT_DELETE"] + [
        "BATCH.DELETE.OBJECT"] * 3
    assert {e.user_name for e in events} == {script.arn}
    rejects = [r for p in got for r in p.rejects]
    assert len(rejects) == 1 and rejects[0].where == f"s3://{logs}/logs/2026-11-28-07-01-00-B2:5"
    assert follower.poll() == 0  # nothing new
    restarted = LogFollower(client, logs, "logs/", "access-log", tmp_path, got.append)
    assert restarted.poll() == 0  # the position survived the restart
    client.put_object(Bucket=logs, Key="logs/2026-11-28-07-02-00-D4", Body=lines[0].encode())
    assert restarted.poll() == 1 and got[-1].events[0].s3_operation == "REST.PUT.OBJECT"


def test_log_follower_cloudtrail_gzip(moto_endpoint, s3_bucket, tmp_path):
    client = _client(moto_endpoint)
    data, logs = s3_bucket(), s3_bucket(versioning=False)
    script = S3Script(client, data, "mallory")
    script.put("a.bin", b"1")
    script.reencrypt_sse_c("a.bin", b"k" * 32)
    script.suspend_versioning()
    key = "AWSLogs/123456789012/CloudTrail/us-east-1/2026/11/28/123456789012_CloudTrail_us-east-1_x.json.gz"
    client.put_object(Bucket=logs, Key=key, Body=cloudtrail_file(script.trail))
    got: list[Parsed] = []
    assert LogFollower(client, logs, "AWSLogs/", "cloudtrail", tmp_path, got.append).poll() == 1
    ops = [(e.s3_operation, e.sse, e.config_change) for e in got[0].events]
    assert ops == [("PutObject", None, None), ("CopyObject", "SSE-C", None),
                   ("PutBucketVersioning", None, "versioning:Suspended,mfa_delete:Disabled")]


def test_version_poller_sees_creates_overwrites_markers_and_purges(moto_endpoint, s3_bucket, tmp_path):
    client = _client(moto_endpoint)
    bucket = s3_bucket()
    client.put_object(Bucket=bucket, Key="existing.csv", Body=b"old")
    got: list[Parsed] = []
    clock = iter(range(10**12, 10**12 + 100))
    poller = VersionPoller(client, bucket, "", tmp_path, got.append, clock_ms=lambda: next(clock))
    assert poller.poll().events == []  # the first poll is the baseline
    v1 = client.put_object(Bucket=bucket, Key="new.csv", Body=b"a")["VersionId"]
    client.put_object(Bucket=bucket, Key="new.csv", Body=b"b")
    client.copy_object(Bucket=bucket, Key="existing.csv", CopySource={"Bucket": bucket, "Key": "existing.csv"},
                       MetadataDirective="REPLACE", Metadata={"x": "1"})
    client.delete_object(Bucket=bucket, Key="existing.csv")  # a delete marker
    client.delete_object(Bucket=bucket, Key="new.csv", VersionId=v1)  # a version purge
    client.put_object(Bucket=bucket, Key="odd name é+%.csv", Body=b"c")
    # A restarted poller goes on from the saved listing, not from a new baseline.
    poller = VersionPoller(client, bucket, "", tmp_path, got.append, clock_ms=lambda: next(clock))
    events = poller.poll().events
    seen = sorted((e.file_path, e.s3_operation, e.activity_id) for e in events)
    assert seen == sorted([
        # v1 came and went between two polls: the poller sees only the second version, as a create.
        ("new.csv", "PutObject", Activity.CREATE),
        ("existing.csv", "PutObject", Activity.UPDATE),
        ("existing.csv", "DeleteMarker", Activity.DELETE),
        ("odd name é+%.csv", "PutObject", Activity.CREATE),
    ]), seen
    assert all(e.attribution == Attribution.OWNER and e.user_name == "webfile" for e in events)
    assert poller.poll().events == []  # nothing changed since
    client.delete_object(Bucket=bucket, Key="existing.csv",
                         VersionId=client.list_object_versions(Bucket=bucket, Prefix="existing.csv")["Versions"][0][
                             "VersionId"])
    purged = poller.poll().events
    assert [(e.s3_operation, e.user_name, e.attribution) for e in purged] == [
        ("DeleteObjectVersion", "unknown", Attribution.UNKNOWN)]
    assert purged[0].s3_version_id
