"""S3 activity in the documented formats, written from what a test script really did against moto.

moto's own access logs are synthetic and its notifications carry no principal, so a script that
calls the S3 API through ``S3Script`` gets, for every call, the event notification S3 would send
(AWS "Event message structure"), the CloudTrail record it would log ("CloudTrail log file
examples" for S3 data and management events) and the server access log line(s) ("Amazon S3
server access log format"), with the version IDs moto returned.
"""
from __future__ import annotations

import gzip
import json
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

ACCOUNT = "123456789012"


def _iso(t: float, ms: bool = True) -> str:
    text = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return (text[:-3] if ms else text[:-7]) + "Z"


def notification(name: str, bucket: str, key: str, principal_id: str, t: float, version: str | None = None,
                 size: int = 0, ip: str = "203.0.113.9") -> dict[str, Any]:
    obj: dict[str, Any] = {"key": quote_plus(key), "size": size, "eTag": secrets.token_hex(16),
                           "sequencer": f"{int(t * 1e9):X}"}
    if version:
        obj["versionId"] = version
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventTime": _iso(t),
        "eventName": name, "userIdentity": {"principalId": principal_id},
        "requestParameters": {"sourceIPAddress": ip},
        "responseElements": {"x-amz-request-id": secrets.token_hex(8).upper(), "x-amz-id-2": secrets.token_hex(20)},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "dataward",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": obj},
    }]}


def cloudtrail(name: str, bucket: str, arn: str, t: float, request: dict[str, Any] | None = None,
               response: dict[str, Any] | None = None, resources: list[str] | None = None,
               management: bool = False) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "eventVersion": "1.09",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDA" + arn.rsplit("/", 1)[-1].upper(), "arn": arn,
                         "accountId": ACCOUNT, "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
                         "userName": arn.rsplit("/", 1)[-1]},
        "eventTime": _iso(t, ms=False), "eventSource": "s3.amazonaws.com", "eventName": name,
        "awsRegion": "us-east-1", "sourceIPAddress": "203.0.113.9", "userAgent": "[Boto3/1.44.8]",
        "requestParameters": {"bucketName": bucket, "Host": f"{bucket}.s3.us-east-1.amazonaws.com", **(request or {})},
        "responseElements": response, "requestID": secrets.token_hex(8).upper(), "eventID": str(uuid.uuid4()),
        "readOnly": False, "eventType": "AwsApiCall", "managementEvent": management,
        "recipientAccountId": ACCOUNT, "eventCategory": "Management" if management else "Data",
        "resources": [{"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{bucket}/{k}"} for k in resources or []]
        + [{"accountId": ACCOUNT, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{bucket}"}],
    }
    return rec


def access_log_line(op: str, bucket: str, key: str | None, requester: str, t: float, request_id: str,
                    status: int = 200, method: str = "PUT", version: str | None = None,
                    bytes_sent: int | None = None, size: int | None = None, query: str = "delete") -> str:
    when = datetime.fromtimestamp(t, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    enc = quote(key, safe="/") if key else "-"
    uri = f'"{method} /{bucket}/{enc} HTTP/1.1"' if key else f'"{method} /{bucket}?{query} HTTP/1.1"'
    return (f"79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be {bucket} [{when}] 203.0.113.9 "
            f"{requester} {request_id} {op} {enc} {uri} {status} - {bytes_sent if bytes_sent is not None else '-'} "
            f"{size if size is not None else '-'} 12 5 \"-\" \"Boto3/1.44.8\" {version or '-'} "
            f"{secrets.token_hex(20)} SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader "
            f"{bucket}.s3.us-east-1.amazonaws.com TLSv1.2 - -")


def cloudtrail_file(records: list[dict[str, Any]]) -> bytes:
    return gzip.compress(json.dumps({"Records": records}).encode())


class S3Script:
    """Real boto3 calls as one principal; each call's notifications go to ``notify`` at once (what
    a bridge from S3 to Kafka does), its CloudTrail records and access-log lines are collected."""

    def __init__(self, client: Any, bucket: str, user: str, notify: Callable[[bytes], None] | None = None) -> None:
        self.client, self.bucket, self.user = client, bucket, user
        self.arn = f"arn:aws:iam::{ACCOUNT}:user/{user}"
        self.principal_id = f"AWS:AIDA{user.upper()}"
        self.notify = notify or (lambda _raw: None)
        self.trail: list[dict[str, Any]] = []
        self.log_lines: list[str] = []

    def _emit(self, name: str, key: str, t: float, version: str | None, size: int = 0) -> None:
        self.notify(json.dumps(notification(name, self.bucket, key, self.principal_id, t, version, size)).encode())

    def put(self, key: str, body: bytes) -> str | None:
        t = time.time()
        version = self.client.put_object(Bucket=self.bucket, Key=key, Body=body).get("VersionId")
        self._emit("ObjectCreated:Put", key, t, version, len(body))
        self.trail.append(cloudtrail("PutObject", self.bucket, self.arn, t, {"key": key},
                                     {"x-amz-version-id": version} if version else None, [key]))
        self.log_lines.append(access_log_line("REST.PUT.OBJECT", self.bucket, key, self.arn, t,
                                              secrets.token_hex(8).upper(), version=version, size=len(body)))
        return version

    def reencrypt_sse_c(self, key: str, customer_key: bytes) -> str | None:
        """CopyObject of a key onto itself with SSE-C (the Codefinger pattern)."""
        t = time.time()
        version = self.client.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
            SSECustomerAlgorithm="AES256", SSECustomerKey=customer_key,
            # moto refuses a self-copy it sees as unchanged (it ignores SSE-C); S3 accepts either.
            MetadataDirective="REPLACE", Metadata={"enc": "1"},
        ).get("VersionId")
        self._emit("ObjectCreated:Copy", key, t, version)
        self.trail.append(cloudtrail(
            "CopyObject", self.bucket, self.arn, t,
            {"key": key, "x-amz-copy-source": f"{self.bucket}/{key}",
             "x-amz-server-side-encryption-customer-algorithm": "AES256", "x-amz-metadata-directive": "REPLACE"},
            {"x-amz-server-side-encryption-customer-algorithm": "AES256", "x-amz-version-id": version}, [key]))
        rid = secrets.token_hex(8).upper()
        self.log_lines.append(access_log_line("REST.COPY.OBJECT_GET", self.bucket, key, self.arn, t, rid, method="GET"))
        self.log_lines.append(access_log_line("REST.COPY.OBJECT", self.bucket, key, self.arn, t, rid, version=version))
        return version

    def delete_objects(self, keys: list[str]) -> list[dict[str, Any]]:
        t = time.time()
        deleted = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys]})
        done = deleted.get("Deleted", [])
        for d in done:
            marker = d.get("DeleteMarker")
            self._emit("ObjectRemoved:DeleteMarkerCreated" if marker else "ObjectRemoved:Delete", d["Key"], t,
                       d.get("DeleteMarkerVersionId") or d.get("VersionId"))
        self.trail.append(cloudtrail("DeleteObjects", self.bucket, self.arn, t, {"delete": ""}, None,
                                     [d["Key"] for d in done]))
        rid = secrets.token_hex(8).upper()
        self.log_lines.append(access_log_line("REST.POST.MULTI_OBJECT_DELETE", self.bucket, None, self.arn, t, rid,
                                              method="POST"))
        self.log_lines += [access_log_line("BATCH.DELETE.OBJECT", self.bucket, d["Key"], self.arn, t, rid,
                                           status=204) for d in done]
        return done

    def suspend_versioning(self) -> None:
        t = time.time()
        conf = {"Status": "Suspended", "MFADelete": "Disabled"}
        self.client.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration=conf)
        self.trail.append(cloudtrail(
            "PutBucketVersioning", self.bucket, self.arn, t,
            {"versioning": "", "VersioningConfiguration": {"xmlns": "http://s3.amazonaws.com/doc/2006-03-01/",
                                                           "Status": "Suspended", "MfaDelete": "Disabled"}},
            management=True))
        self.log_lines.append(access_log_line("REST.PUT.VERSIONING", self.bucket, None, self.arn, t,
                                              secrets.token_hex(8).upper(), query="versioning"))
