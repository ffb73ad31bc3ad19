"""S3 server access logs: the documented space-delimited format, one request per line.

Fields in order (AWS "Amazon S3 server access log format"): bucket owner, bucket, [time],
remote IP, requester, request ID, operation, key, "Request-URI", HTTP status, error code, bytes
sent, object size, total time, turn-around time, "Referer", "User-Agent", version ID, then the
fields newer records append (host ID, signature version, cipher suite, authentication type, host
header, TLS version, access point ARN, aclRequired, source region). ``-`` means empty. Newer
records may carry fields we do not know yet: they are ignored, never a reason to reject.

What the log tells that CloudTrail does not: one ``BATCH.DELETE.OBJECT`` line per key of a
multi-object delete (beside its ``REST.POST.MULTI_OBJECT_DELETE``), lifecycle actions
(``S3.EXPIRE.OBJECT``, ``S3.CREATE.DELETEMARKER``) and both halves of a copy
(``REST.COPY.OBJECT`` and ``REST.COPY.OBJECT_GET``). ``s3_operation`` keeps the log's own name.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

import msgspec

from dwcore.agents.s3_common import (
    BadRecord,
    Parsed,
    event_uid,
    key_from_url,
    principal,
    reject,
    s3_event,
)
from dwcore.schemas.event import AccessEvent, Activity, Attribution

MIN_FIELDS = 18  # up to and including the version ID: older records may stop there
_TOKEN = re.compile(r'\[[^\]]*\]|"(?:[^"\\]|\\.)*"|\S+')
_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"
_VERSION_IN_URI = re.compile(r"[?&]versionId=([^& ]+)")
_MAX_LINE = 256 * 1024  # a real record is a few hundred bytes; longer is hostile or corrupt

# Activities per log operation; the rest of REST.* reads and bucket calls are mapped by shape below.
_OBJECT_OPS: dict[str, Activity] = {
    "REST.PUT.OBJECT": Activity.CREATE,
    "REST.POST.OBJECT": Activity.CREATE,
    "REST.POST.UPLOAD": Activity.CREATE,  # CompleteMultipartUpload
    "REST.COPY.OBJECT": Activity.CREATE,
    "REST.COPY.PART": Activity.CREATE,
    "REST.COPY.OBJECT_GET": Activity.READ,
    "REST.COPY.PART_GET": Activity.READ,
    "REST.GET.OBJECT": Activity.READ,
    "REST.HEAD.OBJECT": Activity.GET_ATTRIBUTES,
    "REST.DELETE.OBJECT": Activity.DELETE,
    "BATCH.DELETE.OBJECT": Activity.DELETE,
    "S3.EXPIRE.OBJECT": Activity.DELETE,
    "S3.CREATE.DELETEMARKER": Activity.DELETE,
    "REST.PUT.OBJECT_LOCK_RETENTION": Activity.SET_ATTRIBUTES,
    "REST.PUT.OBJECT_LOCK_LEGAL_HOLD": Activity.SET_ATTRIBUTES,
    "REST.PUT.ACL": Activity.SET_SECURITY,
    "REST.POST.MULTI_OBJECT_DELETE": Activity.OTHER,  # the keys follow as BATCH.DELETE.OBJECT
}
# Bucket configuration calls and the change each one means, as config_change values.
_CONFIG_OPS: dict[str, str] = {
    "REST.PUT.VERSIONING": "versioning:changed",
    "REST.PUT.LIFECYCLE": "lifecycle:put",
    "REST.DELETE.LIFECYCLE": "lifecycle:deleted",
    "REST.PUT.LOGGING_STATUS": "logging:changed",
    "REST.PUT.ENCRYPTION": "encryption:put",
    "REST.DELETE.ENCRYPTION": "encryption:deleted",
    "REST.PUT.OBJECT_LOCK_CONFIGURATION": "object_lock:put",
    "REST.PUT.REPLICATION": "replication:put",
    "REST.DELETE.REPLICATION": "replication:deleted",
    "REST.PUT.BUCKETPOLICY": "policy:put",
    "REST.DELETE.BUCKETPOLICY": "policy:deleted",
    "REST.PUT.PUBLIC_ACCESS_BLOCK": "public_access_block:put",
    "REST.DELETE.PUBLIC_ACCESS_BLOCK": "public_access_block:deleted",
    "REST.DELETE.BUCKET": "bucket:deleted",
}


def _opt(value: str) -> str | None:
    return None if value == "-" else value


def _int(value: str, name: str) -> int | None:
    if value == "-":
        return None
    if not value.isdigit():
        raise BadRecord(f"{name} is not a number: {value[:40]!r}")
    return int(value)


def _unquote(field: str, name: str) -> str:
    if field == "-":  # lifecycle and copy-source records leave the quoted fields bare
        return ""
    if len(field) < 2 or not (field.startswith('"') and field.endswith('"')):
        raise BadRecord(f"{name} is not a quoted string: {field[:60]!r}")
    return field[1:-1]


def tokens(line: str) -> list[str]:
    out = _TOKEN.findall(line)
    for tok in out:
        if tok.startswith('"') and (len(tok) < 2 or not tok.endswith('"') or tok.endswith('\\"')):
            raise BadRecord("unterminated quoted field")
        if tok.startswith("[") and not tok.endswith("]"):
            raise BadRecord("unterminated [time] field")
    return out


def _time_ms(token: str) -> int:
    if not (token.startswith("[") and token.endswith("]")):
        raise BadRecord(f"time is not bracketed: {token[:40]!r}")
    try:
        return int(datetime.strptime(token[1:-1], _TIME_FORMAT).timestamp() * 1000)
    except ValueError:
        raise BadRecord(f"time not in the log format (06/Feb/2019:00:00:38 +0000): {token[:40]!r}") from None


def parse_line(line: str, device: str) -> AccessEvent | None:
    """One log line as an event; None for an operation we do not record (e.g. WEBSITE.GET)."""
    if len(line) > _MAX_LINE:
        raise BadRecord(f"line longer than {_MAX_LINE} bytes")
    tok = tokens(line)
    if len(tok) < MIN_FIELDS:
        raise BadRecord(f"truncated record: {len(tok)} fields, at least {MIN_FIELDS} expected")
    bucket, op, raw_key = tok[1], tok[6], tok[7]
    if bucket == "-" or not bucket:
        raise BadRecord("no bucket")
    time_ms = _time_ms(tok[2])
    request_id = tok[5]
    uri = _unquote(tok[8], "Request-URI")
    status = _int(tok[9], "HTTP status")
    if status is None and not op.startswith("S3."):  # only S3's own (lifecycle) actions have none
        raise BadRecord("no HTTP status")
    if status is not None and status >= 300:
        return None  # a refused request changed nothing; the error rate is not an access
    bytes_sent = _int(tok[11], "bytes sent")
    object_size = _int(tok[12], "object size")
    _unquote(tok[15], "Referer")
    _unquote(tok[16], "User-Agent")
    version = _opt(tok[17])
    if version is None:
        found = _VERSION_IN_URI.search(uri)
        version = found.group(1) if found else None
    key, escaped = key_from_url(raw_key) if raw_key != "-" else (None, False)
    activity = _OBJECT_OPS.get(op)
    change = _CONFIG_OPS.get(op)
    if activity is None and change is None:
        if not op.startswith(("REST.", "BATCH.", "S3.")):
            raise BadRecord(f"unknown operation {op[:60]!r}")
        if ".GET." in op or ".HEAD." in op:
            activity = Activity.GET_ATTRIBUTES if key is None else Activity.READ
        else:
            activity = Activity.OTHER
    if change is not None:
        activity = Activity.DELETE if op == "REST.DELETE.BUCKET" else Activity.SET_ATTRIBUTES
    assert activity is not None
    return s3_event(
        uid=event_uid("s3_access_log", bucket, request_id, op, raw_key, version),
        time_ms=time_ms,
        activity=activity,
        user=principal(tok[4]),
        attribution=Attribution.S3_ACCESS_LOG,
        device=device,
        bucket=bucket,
        key=key,
        escaped=escaped,
        operation=op,
        s3_version_id=version,
        client_ip=_opt(tok[3]),
        bytes_read=bytes_sent if activity == Activity.READ else None,
        file_size=object_size,
        config_change=change,
        message=f"{uri[:300]}" if change is not None else None,
    )


def _mark_in_place_copies(events: list[AccessEvent]) -> list[AccessEvent]:
    """A copy whose source is its own destination overwrote the object (re-encryption does this).
    Both halves of one request are logged with the same bucket, key and time."""
    gets = {(e.share, e.file_path, e.time) for e in events if e.s3_operation == "REST.COPY.OBJECT_GET"}
    if not gets:
        return events
    out = []
    for e in events:
        if e.s3_operation == "REST.COPY.OBJECT" and (e.share, e.file_path, e.time) in gets:
            e = msgspec.structs.replace(e, activity_id=Activity.UPDATE, activity_name=Activity.UPDATE.label)
        out.append(e)
    return out


def parse_lines(lines: Iterable[bytes], where: str, device: str = "s3") -> Parsed:
    """Every line of a log object; bad lines become rejects with their line number."""
    out = Parsed()
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            event = parse_line(line.decode("utf-8"), device)
        except UnicodeDecodeError:
            out.rejects.append(reject(f"{where}:{number}", "line is not UTF-8 text", line))
            continue
        except BadRecord as exc:
            out.rejects.append(reject(f"{where}:{number}", str(exc), line))
            continue
        if event is not None:
            out.events.append(event)
    out.events = _mark_in_place_copies(out.events)
    return out
