"""S3 event notifications (the JSON S3 sends to SQS, SNS, Lambda or a bridge into Kafka).

The documented structure: ``{"Records": [{"eventName": "ObjectCreated:Put", "eventTime": ...,
"userIdentity": {"principalId": ...}, "requestParameters": {"sourceIPAddress": ...},
"responseElements": {"x-amz-request-id": ...}, "s3": {"bucket": {"name": ...}, "object": {"key":
(form-encoded), "size", "eTag", "versionId", "sequencer"}}}]}``. An SNS envelope (``"Type":
"Notification"``, the record JSON in ``Message``) is unwrapped; ``s3:TestEvent`` is skipped.

This is the fast path: S3 sends these within seconds of the call, where CloudTrail and GuardDuty
take minutes. It names the principal by ID (``AWS:AIDA...``), not by ARN, and carries no
encryption details; SSE-C re-encryption shows here as a storm of ``ObjectCreated:Copy``.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from dwcore.agents.s3_common import BadRecord, Parsed, event_uid, key_from_form, principal, reject, s3_event
from dwcore.schemas.event import AccessEvent, Activity, Attribution

MAX_MESSAGE = 4 << 20

_ACTIVITY_BY_FAMILY = {
    "ObjectCreated": Activity.CREATE,
    "ObjectRemoved": Activity.DELETE,
    "LifecycleExpiration": Activity.DELETE,
    "ObjectTagging": Activity.SET_ATTRIBUTES,
    "ObjectAcl": Activity.SET_SECURITY,
    "ObjectRestore": Activity.OTHER,
    "LifecycleTransition": Activity.OTHER,
    "IntelligentTiering": Activity.OTHER,
    "Replication": Activity.OTHER,
    "ReducedRedundancyLostObject": Activity.OTHER,
}


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_record(record: object, device: str) -> AccessEvent | None:
    if not isinstance(record, dict):
        raise BadRecord("record is not a JSON object")
    if record.get("eventSource") not in (None, "aws:s3"):
        return None
    name = record.get("eventName")
    if not isinstance(name, str) or ":" not in name:
        raise BadRecord("eventName missing or not 'Family:Type'")
    name = name.removeprefix("s3:")
    activity = _ACTIVITY_BY_FAMILY.get(name.split(":", 1)[0])
    if activity is None:
        raise BadRecord(f"unknown eventName {name[:60]!r}")
    s3 = _dict(record.get("s3"))
    bucket = _dict(s3.get("bucket")).get("name")
    obj = _dict(s3.get("object"))
    raw_key = obj.get("key")
    if not isinstance(bucket, str) or not bucket:
        raise BadRecord("s3.bucket.name missing")
    if not isinstance(raw_key, str) or not raw_key:
        raise BadRecord("s3.object.key missing")
    when = record.get("eventTime")
    if not isinstance(when, str):
        raise BadRecord("eventTime missing")
    try:
        time_ms = int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise BadRecord(f"eventTime not ISO 8601: {when[:40]!r}") from None
    who = _dict(record.get("userIdentity")).get("principalId")
    if not isinstance(who, str) or not who:
        raise BadRecord("userIdentity.principalId missing: the principal is what detection counts by")
    key, escaped = key_from_form(raw_key)
    version = obj.get("versionId")
    size = obj.get("size")
    ip = _dict(record.get("requestParameters")).get("sourceIPAddress")
    request_id = _dict(record.get("responseElements")).get("x-amz-request-id")
    return s3_event(
        uid=event_uid("notification", bucket, raw_key, version, obj.get("sequencer"), name, request_id),
        time_ms=time_ms,
        activity=activity,
        user=principal(who),
        user_uid=who,
        attribution=Attribution.CLOUDTRAIL,
        device=device,
        bucket=bucket,
        key=key,
        escaped=escaped,
        operation=name,
        s3_version_id=version if isinstance(version, str) and version else None,
        file_size=size if isinstance(size, int) and size >= 0 else None,
        client_ip=ip if isinstance(ip, str) else None,
    )


def _unwrap(doc: object) -> object:
    # SNS delivers the S3 message as a JSON string in "Message".
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        try:
            return json.loads(doc["Message"])
        except ValueError:
            raise BadRecord("SNS Message is not JSON") from None
    return doc


def parse_message(raw: bytes, where: str, device: str = "s3") -> Parsed:
    """One notification message (one or more records); each bad record is its own reject."""
    out = Parsed()
    if len(raw) > MAX_MESSAGE:
        out.rejects.append(reject(where, f"message larger than {MAX_MESSAGE} bytes", raw))
        return out
    try:
        doc = _unwrap(json.loads(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        out.rejects.append(reject(where, f"not JSON: {exc}", raw))
        return out
    except BadRecord as exc:
        out.rejects.append(reject(where, str(exc), raw))
        return out
    if isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
        return out
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        out.rejects.append(reject(where, "no Records list: not an S3 event notification", raw))
        return out
    for i, rec in enumerate(records, 1):
        try:
            event = parse_record(rec, device)
        except BadRecord as exc:
            out.rejects.append(reject(f"{where} record {i}", str(exc), json.dumps(rec).encode()))
            continue
        if event is not None:
            out.events.append(event)
    return out


def parse_lines(data: bytes, where: str, device: str = "s3") -> Parsed:
    """A file of messages, one JSON message per line (or a single pretty-printed message)."""
    stripped = data.strip()
    if stripped.startswith(b"{") and b"\n" in stripped:
        try:
            json.loads(stripped)
            return parse_message(stripped, where, device)
        except (ValueError, RecursionError):
            pass  # not one document: one message per line
    out = Parsed()
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            out.extend(parse_message(line, f"{where}:{number}", device))
    return out
