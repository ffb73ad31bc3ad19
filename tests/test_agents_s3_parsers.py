"""S3 parsers on lines and records written from the AWS documentation's formats (server access log
format, CloudTrail S3 data/management events, event notification structure), including
malformed, truncated and hostile ones. No broker: pure parsing."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from dwcore.agents import s3_accesslog, s3_cloudtrail, s3_notification
from dwcore.agents.s3_parse import parse_bytes
from dwcore.schemas.codec import decode_event, encode
from dwcore.schemas.event import Activity, Attribution, Source
from dwcore.schemas.paths import name_bytes
from tests.procs import run_cli

DATA = Path(__file__).parent / "data" / "s3"
MALLORY = "arn:aws:iam::123456789012:user/mallory"


def _line(op: str, key: str = "-", *, requester: str = MALLORY, status: str = "200", rid: str = "REQ1",
          uri: str | None = None, sent: str = "-", version: str = "-", when: str = "06/Feb/2019:00:00:40 +0000",
          tail: str = " SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader b.s3.amazonaws.com TLSv1.2 - -") -> str:
    uri = uri if uri is not None else f'"PUT /bkt/{key} HTTP/1.1"'
    return (f"79a5owner bkt [{when}] 192.0.2.7 {requester} {rid} {op} {key} {uri} {status} - {sent} 10 7 6 "
            f'"-" "aws-cli/2.15.0 Python/3.11" {version} hostid={tail}')


def test_access_log_file_yields_every_good_line_and_rejects_each_bad_one_with_its_line():
    parsed = s3_accesslog.parse_lines((DATA / "access.log").read_bytes().splitlines(), "access.log")
    ops = [e.s3_operation for e in parsed.events]
    assert ops.count("BATCH.DELETE.OBJECT") == 2 and "REST.POST.MULTI_OBJECT_DELETE" in ops
    assert {"S3.EXPIRE.OBJECT", "S3.CREATE.DELETEMARKER", "REST.COPY.OBJECT", "REST.COPY.OBJECT_GET"} <= set(ops)
    assert len(parsed.events) == 12  # 16 lines: one refused (403), three malformed
    assert [(r.where, r.reason.split(":")[0]) for r in parsed.rejects] == [
        ("access.log:14", "truncated record"),
        ("access.log:15", "HTTP status is not a number"),
        ("access.log:16", "time not in the log format (06/Feb/2019"),
    ]
    # The raw bytes are kept whole for the dead letter.
    assert parsed.rejects[0].raw == (DATA / "access.log").read_bytes().splitlines()[13]
    for e in parsed.events:
        assert e.source == Source.S3 and e.attribution == Attribution.S3_ACCESS_LOG
        assert e.share == "amzn-s3-demo-bucket1"
        assert decode_event(encode(e)) == e  # every event passes the envelope's validation


def test_access_log_fields_principal_key_version_bytes_and_in_place_copy():
    parsed = s3_accesslog.parse_lines((DATA / "access.log").read_bytes().splitlines(), "access.log")
    by_op: dict[str, list] = {}
    for e in parsed.events:
        by_op.setdefault(e.s3_operation, []).append(e)
    put = by_op["REST.PUT.OBJECT"][0]
    assert put.user_name == MALLORY and put.client_ip == "192.0.2.7" and put.activity_id == Activity.CREATE
    assert put.file_path == "train/part-0001.parquet" and put.s3_version_id == "3HL4kqtJvjVBH40Nrjfkd"
    assert put.time == 1549411240000
    # A copy onto the same key is an overwrite (re-encryption in place); its GET half is a read.
    assert by_op["REST.COPY.OBJECT"][0].activity_id == Activity.UPDATE
    assert by_op["REST.COPY.OBJECT_GET"][0].activity_id == Activity.READ
    # Keys are URL-encoded bytes in the log: a non-UTF-8 key round-trips through the escaped form.
    odd = by_op["BATCH.DELETE.OBJECT"][1]
    assert odd.names_escaped and name_bytes(odd.file_path, True) == b"train/part two\xe9.parquet"
    get = by_op["REST.GET.OBJECT"][0]
    assert get.bytes_read == 734003200 and get.user_name == "arn:aws:iam::123456789012:user/bob"
    # The version of a DELETE comes from the Request-URI when the field is empty: a version purge.
    assert by_op["REST.DELETE.OBJECT"][0].s3_version_id == "3HL4kqtJlcpXroDTDmJ"
    lifecycle = by_op["S3.EXPIRE.OBJECT"][0]
    assert lifecycle.user_name == "AmazonS3" and lifecycle.activity_id == Activity.DELETE
    assert by_op["REST.PUT.VERSIONING"][0].config_change == "versioning:changed"
    assert by_op["REST.PUT.VERSIONING"][0].file_path == "/"


def test_access_log_newer_and_older_records_and_anonymous_requester():
    oldest = _line("REST.PUT.OBJECT", "a.txt", tail="").split(" hostid=")[0]  # stops at the version ID
    newest = _line("REST.PUT.OBJECT", "b.txt", rid="R2") + " us-west-2 future-field-1 future-field-2"
    anon = _line("REST.GET.OBJECT", "c.txt", requester="-", rid="R3", sent="99")
    parsed = s3_accesslog.parse_lines([oldest.encode(), newest.encode(), anon.encode()], "x")
    assert parsed.rejects == []
    assert [e.file_path for e in parsed.events] == ["a.txt", "b.txt", "c.txt"]
    assert parsed.events[2].user_name == "anonymous" and parsed.events[2].bytes_read == 99


def test_access_log_hostile_lines_are_rejected_not_crashing():
    lines = [
        b"",  # blank lines are skipped, not rejected
        b"\xff\xfe not utf-8 at all",
        _line("REST.PUT.OBJECT", "k", uri='"PUT /bkt/k HTTP/1.1').encode(),  # unterminated quote
        _line("REST.PUT.OBJECT", "k", when="06/Feb/2019:00:00:40 +0000").replace("[", "", 1).encode(),
        _line("REST.PUT.OBJECT", "k", status="2OO").encode(),
        _line("DROP TABLE events; --", "k").encode(),
        _line("REST.PUT.OBJECT", "k" * 5000).encode(),  # a key longer than the envelope allows
        _line("REST.PUT.OBJECT", "k") .encode() * 1000,  # an oversized line
        _line("REST.PUT.OBJECT", "%1b%5b31mred%0a").encode(),  # escape sequences in a key are kept as data
    ]
    parsed = s3_accesslog.parse_lines(lines, "h")
    assert len(parsed.rejects) == 7, [r.reason for r in parsed.rejects]
    assert [e.file_path for e in parsed.events] == ["\x1b[31mred\n"]
    assert all(r.reason for r in parsed.rejects)


def test_cloudtrail_records_sse_kms_bytes_config_changes_and_per_key_deletes():
    parsed = s3_cloudtrail.parse_bytes((DATA / "cloudtrail.json").read_bytes(), "ct.json")
    by_name: dict[str, list] = {}
    for e in parsed.events:
        by_name.setdefault(e.s3_operation, []).append(e)
    copy = by_name["CopyObject"][0]
    assert copy.sse == "SSE-C" and copy.activity_id == Activity.UPDATE  # copied onto itself
    assert copy.user_name == "arn:aws:iam::111122223333:user/mallory" and copy.user_uid == "AIDAMALLORYEXAMPLE"
    assert copy.attribution == Attribution.CLOUDTRAIL and copy.client_ip == "203.0.113.9"
    put = by_name["PutObject"][0]
    assert put.sse == "aws:kms" and put.kms_key_account == "999988887777"
    assert by_name["GetObject"][0].bytes_read == 734003200
    assert [e.file_path for e in by_name["DeleteObjects"]] == [f"train/part-000{i}.parquet" for i in (1, 2, 3)]
    assert len({e.uid for e in by_name["DeleteObjects"]}) == 3
    assert by_name["PutBucketVersioning"][0].config_change == "versioning:Suspended,mfa_delete:Disabled"
    assert by_name["PutBucketLifecycle"][0].config_change == "lifecycle:expiration"
    assert by_name["PutBucketLogging"][0].config_change == "logging:Disabled"
    assert by_name["PutObjectRetention"][0].config_change == "retention:bypass_governance"
    enc = by_name["PutBucketEncryption"][0]
    assert enc.config_change == "encryption:put" and enc.kms_key_account == "999988887777"
    assert by_name["DeleteObject"][0].s3_version_id == "v1.old"
    assert by_name["DeleteBucket"][0].config_change == "bucket:deleted"
    # Refused calls (errorCode) and other services are skipped; malformed S3 records are rejected.
    assert [r.where for r in parsed.rejects] == ["ct.json:record 14", "ct.json:record 15"]
    assert "eventTime" in parsed.rejects[0].reason and "bucketName" in parsed.rejects[1].reason
    assert json.loads(parsed.rejects[0].raw)["eventID"] == "e14"


def test_cloudtrail_gzip_json_lines_and_a_truncated_gzip_keeps_the_good_records():
    records = json.loads((DATA / "cloudtrail.json").read_text())["Records"]
    whole = s3_cloudtrail.parse_bytes(gzip.compress((DATA / "cloudtrail.json").read_bytes()), "f.json.gz")
    assert len(whole.events) == 13 and len(whole.rejects) == 2
    lines = b"\n".join(json.dumps(r).encode() for r in records[:3]) + b"\n{not json\n"
    per_line = s3_cloudtrail.parse_bytes(lines, "lines")
    assert [e.s3_operation for e in per_line.events] == ["CopyObject", "PutObject", "GetObject"]
    assert [r.where for r in per_line.rejects] == ["lines:4"] and per_line.rejects[0].raw == b"{not json"
    zipped = gzip.compress(b"\n".join(json.dumps(r).encode() for r in records[:6]))
    cut = s3_cloudtrail.parse_bytes(zipped[: len(zipped) * 2 // 3], "cut.gz")
    assert any("truncated gzip" in r.reason for r in cut.rejects)
    assert 1 <= len(cut.events) < 8  # the complete records before the cut survive
    assert s3_cloudtrail.parse_bytes(b"[" * 100_000, "deep").events == []  # no RecursionError escapes


def _notification(name: str, key: str, principal: str | None = "AWS:AIDAMALLORY", version: str | None = "v1") -> dict:
    rec = {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2025-01-13T09:14:02.123Z", "eventName": name,
        "requestParameters": {"sourceIPAddress": "203.0.113.9"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "dataward",
               "bucket": {"name": "training-data", "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                          "arn": "arn:aws:s3:::training-data"},
               "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                          "versionId": version, "sequencer": "0055AED6DCD90281E5"}},
    }
    if principal is not None:
        rec["userIdentity"] = {"principalId": principal}
    return rec


def test_notification_messages_records_sns_envelope_and_rejects():
    good = json.dumps({"Records": [_notification("ObjectCreated:Copy", "train/part+0001.parquet"),
                                   _notification("ObjectRemoved:DeleteMarkerCreated", "a%2Fb%FF", version="dm1"),
                                   _notification("LifecycleExpiration:Delete", "old.txt", principal="s3.amazonaws.com"),
                                   _notification("ObjectCreated:Put", "x", principal=None)]}).encode()
    sns = json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [
        _notification("ObjectRemoved:Delete", "y")]})}).encode()
    test_event = b'{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2025-01-13T09:14:02.123Z","Bucket":"b"}'
    data = b"\n".join([good, sns, test_event, b'{"Records": 3}', b"\x00garbage"])
    parsed = s3_notification.parse_lines(data, "msgs")
    assert [(e.s3_operation, e.activity_id) for e in parsed.events] == [
        ("ObjectCreated:Copy", Activity.CREATE), ("ObjectRemoved:DeleteMarkerCreated", Activity.DELETE),
        ("LifecycleExpiration:Delete", Activity.DELETE), ("ObjectRemoved:Delete", Activity.DELETE)]
    first = parsed.events[0]
    assert first.file_path == "train/part 0001.parquet"  # form-encoded: '+' is a space
    assert first.user_name == "AWS:AIDAMALLORY" and first.client_ip == "203.0.113.9"
    assert first.time == 1736759642123 and first.s3_version_id == "v1" and first.file_size == 1024
    assert name_bytes(parsed.events[1].file_path, True) == b"a/b\xff"
    assert [r.where for r in parsed.rejects] == ["msgs:1 record 4", "msgs:4", "msgs:5"]
    assert "principalId" in parsed.rejects[0].reason


def test_parse_dispatch_rejects_unknown_format():
    import pytest

    with pytest.raises(ValueError):
        parse_bytes(b"", "syslog", "x")


def test_cli_parse_prints_events_on_stdout_and_rejects_with_reason_on_stderr(tmp_path):
    res = run_cli("agent", "s3", "parse", str(DATA / "access.log"), "--format", "access-log")
    assert res.returncode == 1  # something was rejected
    events = [decode_event(line.encode()) for line in res.stdout.splitlines()]
    assert len(events) == 12 and all(e.source == Source.S3 for e in events)
    rejected = [line for line in res.stderr.splitlines() if line.startswith("rejected ")]
    assert len(rejected) == 3 and "access.log:14: truncated record" in rejected[0]
    clean = tmp_path / "ct.json.gz"
    records = json.loads((DATA / "cloudtrail.json").read_text())["Records"][:3]
    clean.write_bytes(gzip.compress(json.dumps({"Records": records}).encode()))
    ok = run_cli("agent", "s3", "parse", str(clean), "--format", "cloudtrail")
    assert ok.returncode == 0, ok.stderr
    assert [json.loads(line)["s3_operation"] for line in ok.stdout.splitlines()] == ["CopyObject", "PutObject",
                                                                                     "GetObject"]
