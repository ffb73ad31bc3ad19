"""CloudTrail S3 data and management events: a ``{"Records": [...]}`` file, gzipped or not, or
one JSON record per line (what a stream delivery or ``jq -c '.Records[]'`` gives).

From each record: the principal (``userIdentity.arn``, else the service that invoked, else the
principal ID), the bucket and key, the version, the server-side encryption the request asked for
(SSE-C customer algorithm, a KMS key and the account that owns it), bytes sent for reads, and for
bucket configuration calls what changed (``config_change``, e.g. ``versioning:Suspended``).

``DeleteObjects`` lists its keys in CloudTrail only sometimes (as object resources or in the request
body); when it does, each key is one event, as the issue wants deletes counted per key. When it
does not, one event stands for the whole call (the access log or event notifications give the keys).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from dwcore.agents.s3_common import BadRecord, Parsed, event_uid, key_text, principal, reject, s3_event
from dwcore.schemas.event import AccessEvent, Activity, Attribution

MAX_FILE = 512 << 20  # decompressed; CloudTrail files are a few MiB
MAX_KEYS_PER_CALL = 1000  # S3's own limit for DeleteObjects

_OBJECT_CALLS: dict[str, Activity] = {
    "PutObject": Activity.CREATE,
    "CopyObject": Activity.CREATE,
    "CompleteMultipartUpload": Activity.CREATE,
    "UploadPart": Activity.CREATE,
    "UploadPartCopy": Activity.CREATE,
    "GetObject": Activity.READ,
    "HeadObject": Activity.GET_ATTRIBUTES,
    "DeleteObject": Activity.DELETE,
    "DeleteObjects": Activity.DELETE,
    "PutObjectRetention": Activity.SET_ATTRIBUTES,
    "PutObjectLegalHold": Activity.SET_ATTRIBUTES,
    "PutObjectAcl": Activity.SET_SECURITY,
    "RestoreObject": Activity.OTHER,
}
_SSE_C = "x-amz-server-side-encryption-customer-algorithm"
_SSE = "x-amz-server-side-encryption"
_KMS_KEY = "x-amz-server-side-encryption-aws-kms-key-id"


def _ms(value: object) -> int:
    if not isinstance(value, str):
        raise BadRecord("eventTime missing")
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise BadRecord(f"eventTime not ISO 8601: {value[:40]!r}") from None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _who(record: dict[str, Any]) -> tuple[str, str]:
    ident = _dict(record.get("userIdentity"))
    uid = str(ident.get("principalId") or "")
    name = ident.get("arn") or ident.get("invokedBy") or uid or None
    if ident.get("type") == "AWSService" and ident.get("invokedBy"):
        name = ident["invokedBy"]
    return principal(name if isinstance(name, str) else None), uid


def _kms_account(key_id: object, own_accounts: set[str]) -> str | None:
    # arn:aws:kms:REGION:ACCOUNT:key/ID; a bare key id or alias is always the caller's own account.
    if not isinstance(key_id, str) or not key_id.startswith("arn:"):
        return None
    parts = key_id.split(":")
    account = parts[4] if len(parts) > 5 else ""
    return account if account and account not in own_accounts else None


def _config_change(name: str, req: dict[str, Any]) -> str | None:
    if name == "PutBucketVersioning":
        conf = _dict(req.get("VersioningConfiguration"))
        changes = [f"versioning:{conf.get('Status') or 'unset'}"]
        if conf.get("MfaDelete"):
            changes.append(f"mfa_delete:{conf['MfaDelete']}")
        return ",".join(changes)
    if name == "PutBucketLogging":
        status = req.get("BucketLoggingStatus")
        return "logging:Enabled" if _dict(status).get("LoggingEnabled") else "logging:Disabled"
    if name in ("PutBucketLifecycle", "PutBucketLifecycleConfiguration"):
        rules = _list(_dict(req.get("LifecycleConfiguration")).get("Rule"))
        expires = any(
            isinstance(r, dict) and (r.get("Expiration") or r.get("NoncurrentVersionExpiration"))
            and r.get("Status", "Enabled") == "Enabled"
            for r in rules
        )
        return "lifecycle:expiration" if expires else "lifecycle:put"
    if name == "PutObjectLockConfiguration":
        conf = _dict(req.get("ObjectLockConfiguration"))
        retention = _dict(_dict(conf.get("Rule")).get("DefaultRetention"))
        if not retention:
            return "object_lock:default_retention_removed"
        span = retention.get("Days") or retention.get("Years")
        unit = "d" if retention.get("Days") else "y"
        return f"object_lock:default_retention:{retention.get('Mode', '?')}:{span}{unit}"
    if name == "PutObjectRetention":
        bypass = str(req.get("x-amz-bypass-governance-retention", "")).lower() == "true"
        return "retention:bypass_governance" if bypass else "retention:put"
    return {
        "PutBucketEncryption": "encryption:put",
        "DeleteBucketEncryption": "encryption:deleted",
        "DeleteBucketLifecycle": "lifecycle:deleted",
        "PutBucketReplication": "replication:put",
        "DeleteBucketReplication": "replication:deleted",
        "PutBucketPolicy": "policy:put",
        "DeleteBucketPolicy": "policy:deleted",
        "DeleteBucket": "bucket:deleted",
        "PutBucketPublicAccessBlock": "public_access_block:put",
        "DeleteBucketPublicAccessBlock": "public_access_block:deleted",
    }.get(name)


def _deleted_keys(record: dict[str, Any], bucket: str) -> list[str]:
    keys: list[str] = []
    prefix = f"arn:aws:s3:::{bucket}/"
    for res in _list(record.get("resources")):
        arn = _dict(res).get("ARN")
        if _dict(res).get("type") == "AWS::S3::Object" and isinstance(arn, str) and arn.startswith(prefix):
            keys.append(arn[len(prefix):])
    if not keys:
        body = _dict(_dict(record.get("requestParameters")).get("delete"))
        for obj in _list(body.get("Object")):
            if isinstance(_dict(obj).get("Key"), str):
                keys.append(obj["Key"])
    if len(keys) > MAX_KEYS_PER_CALL:
        raise BadRecord(f"DeleteObjects with {len(keys)} keys (S3 allows {MAX_KEYS_PER_CALL})")
    return keys


def parse_record(record: object, device: str) -> list[AccessEvent]:
    """The events of one CloudTrail record; [] for records that are not about S3 buckets/objects."""
    if not isinstance(record, dict):
        raise BadRecord("record is not a JSON object")
    if record.get("eventSource") != "s3.amazonaws.com":
        return []
    name = record.get("eventName")
    if not isinstance(name, str) or not name:
        raise BadRecord("eventName missing")
    if record.get("errorCode"):
        return []  # refused: nothing changed
    req = _dict(record.get("requestParameters"))
    resp = _dict(record.get("responseElements"))
    extra = _dict(record.get("additionalEventData"))
    bucket = req.get("bucketName")
    if not isinstance(bucket, str) or not bucket:
        raise BadRecord(f"{name}: requestParameters.bucketName missing")
    user, user_uid = _who(record)
    time_ms = _ms(record.get("eventTime"))
    event_id = record.get("eventID") or record.get("requestID") or ""
    change = _config_change(name, req)
    activity = _OBJECT_CALLS.get(name)
    if activity is None:
        if change is None:
            return []  # other bucket calls (GetBucketAcl, ListObjects, ...) are not recorded
        activity = Activity.DELETE if name == "DeleteBucket" else Activity.SET_ATTRIBUTES
    own = {a for a in (record.get("recipientAccountId"), _dict(record.get("userIdentity")).get("accountId")) if a}
    sse = "SSE-C" if req.get(_SSE_C) else (req.get(_SSE) or resp.get(_SSE))
    kms_key = req.get(_KMS_KEY) or resp.get(_KMS_KEY)
    if name == "PutBucketEncryption":  # the bucket's default key: another account's is a takeover
        rule = _dict(_dict(req.get("ServerSideEncryptionConfiguration")).get("Rule"))
        kms_key = _dict(rule.get("ApplyServerSideEncryptionByDefault")).get("KMSMasterKeyID")
    version = req.get("versionId") or resp.get("x-amz-version-id")
    raw_key = req.get("key")
    if name == "CopyObject" and isinstance(req.get("x-amz-copy-source"), str) and isinstance(raw_key, str):
        source = req["x-amz-copy-source"].lstrip("/").split("?", 1)[0]
        if source == f"{bucket}/{raw_key}":
            activity = Activity.UPDATE  # copied onto itself: an in-place rewrite (re-encryption)
    bytes_out = extra.get("bytesTransferredOut")
    common: dict[str, Any] = dict(
        time_ms=time_ms, activity=activity, user=user, attribution=Attribution.CLOUDTRAIL, device=device,
        bucket=bucket, operation=name, user_uid=user_uid,
        client_ip=record.get("sourceIPAddress") if isinstance(record.get("sourceIPAddress"), str) else None,
        sse=sse if isinstance(sse, str) else None,
        kms_key_account=_kms_account(kms_key, own),
        bytes_read=int(bytes_out) if activity == Activity.READ and isinstance(bytes_out, int | float) and
        bytes_out >= 0 else None,
        config_change=change,
        s3_version_id=version if isinstance(version, str) else None,
    )
    if name == "DeleteObjects":
        keys = _deleted_keys(record, bucket)
        if keys:
            events = []
            for i, k in enumerate(keys):
                text, escaped = key_text(k)
                events.append(s3_event(uid=event_uid("cloudtrail", event_id, i, k), key=text, escaped=escaped,
                                       **common))
            return events
        return [s3_event(uid=event_uid("cloudtrail", event_id), key=None,
                         message="DeleteObjects: key names not in this CloudTrail record", **common)]
    if raw_key is not None and not isinstance(raw_key, str):
        raise BadRecord(f"{name}: requestParameters.key is not a string")
    text, escaped = key_text(raw_key) if raw_key else (None, False)
    if activity != Activity.SET_ATTRIBUTES and name in _OBJECT_CALLS and not text:
        raise BadRecord(f"{name}: requestParameters.key missing")
    return [s3_event(uid=event_uid("cloudtrail", event_id), key=text, escaped=escaped, **common)]


def _records(data: bytes) -> Iterator[tuple[str, object, bytes]]:
    """(where, record or BadRecord, raw bytes): whole-file JSON first, else one record per line."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("Records"), list):
        for i, rec in enumerate(doc["Records"], 1):
            yield f"record {i}", rec, json.dumps(rec).encode()
        return
    if isinstance(doc, dict):
        yield "record 1", doc, data
        return
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            yield f"{number}", BadRecord(f"not JSON: {exc}"), line
            continue
        if isinstance(item, dict) and isinstance(item.get("Records"), list):
            for i, rec in enumerate(item["Records"], 1):
                yield f"{number} record {i}", rec, json.dumps(rec).encode()
        else:
            yield f"{number}", item, line


def read_bytes(data: bytes) -> tuple[bytes, str | None]:
    """The file's text and, for a broken gzip, why: what did decompress is still used, so a
    truncated file yields every complete record before the cut."""
    if data[:2] != b"\x1f\x8b":
        return data, None
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_FILE + 1)
    except zlib.error as exc:
        return b"", f"corrupt gzip: {exc}"
    if len(out) > MAX_FILE:
        return b"", f"decompressed file larger than {MAX_FILE} bytes"
    return out, None if inflater.eof else "truncated gzip: the file ends before the end of its stream"


def parse_bytes(data: bytes, where: str, device: str = "s3") -> Parsed:
    out = Parsed()
    raw = data
    data, problem = read_bytes(data)
    if problem is not None:
        # The cut-off tail (or the whole file, when nothing decompressed) is kept as the dead letter.
        out.rejects.append(reject(where, problem, raw))
    for loc, rec, raw in _records(data):
        if isinstance(rec, BadRecord):
            out.rejects.append(reject(f"{where}:{loc}", str(rec), raw))
            continue
        try:
            out.events.extend(parse_record(rec, device))
        except BadRecord as exc:
            out.rejects.append(reject(f"{where}:{loc}", str(exc), raw))
    return out
