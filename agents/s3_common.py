"""What the S3 parsers share: the result shape, rejects, and building one S3 access event.

Every S3 source yields ``Parsed``: the good events and, for each line or record that could not be
used, a ``Reject`` carrying the raw bytes and the reason, so a file with one bad line still gives
all its good ones and the bad one reaches the dead-letter topic whole.

Bucket-level calls (versioning, logging, lifecycle, encryption, ...) have no key: their
``file_path`` is ``/`` so that the envelope's non-empty path holds and a query on the bucket finds them.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

import msgspec

from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event
from dwcore.schemas.paths import name_text

S3_EVENT_NAMESPACE = uuid.UUID("6c0b6c1e-8f0e-5a55-9f55-5f3ae7d9a3c1")
BUCKET_PATH = "/"
ANONYMOUS = "anonymous"
MAX_RAW = 1 << 20  # a dead letter keeps at most 1 MiB of a hostile oversized line
MAX_FIELD = 4096  # the envelope's limit for user names and paths


class Reject(msgspec.Struct, frozen=True):
    """One line or record that could not become an event: where it was, why, and its bytes."""

    where: str  # "FILE:LINE" or "FILE:record N"
    reason: str
    raw: bytes


@dataclass
class Parsed:
    events: list[AccessEvent] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def extend(self, other: Parsed) -> None:
        self.events.extend(other.events)
        self.rejects.extend(other.rejects)


class BadRecord(ValueError):
    """Permanent: this line/record is malformed; the message is the dead-letter reason."""


def reject(where: str, reason: str, raw: bytes) -> Reject:
    return Reject(where=where, reason=reason, raw=raw[:MAX_RAW])


def event_uid(*parts: object) -> str:
    """Deterministic: re-reading the same log (a restart, an overlap) gives the same uid, so
    consumers can drop the duplicate."""
    return str(uuid.uuid5(S3_EVENT_NAMESPACE, "\x1f".join("" if p is None else str(p) for p in parts)))


def key_from_url(encoded: str) -> tuple[str, bool]:
    """A URL-encoded key (access logs) as lossless text: keys are bytes like file names."""
    return name_text(unquote_to_bytes(encoded))


def key_from_form(encoded: str) -> tuple[str, bool]:
    """A form-encoded key (event notifications: spaces as '+')."""
    return name_text(unquote_to_bytes(encoded.replace("+", " ")))


def key_text(key: str) -> tuple[str, bool]:
    """A key already decoded by a JSON parser (CloudTrail): surrogates become escapes."""
    return name_text(key.encode("utf-8", "surrogatepass"))


def principal(value: str | None) -> str:
    value = (value or "").strip()
    if not value or value == "-":
        return ANONYMOUS
    if len(value) > MAX_FIELD:
        raise BadRecord(f"principal longer than {MAX_FIELD} characters")
    return value


def s3_event(
    *,
    uid: str,
    time_ms: int,
    activity: Activity,
    user: str,
    attribution: Attribution,
    device: str,
    bucket: str,
    key: str | None,
    escaped: bool = False,
    operation: str,
    **extra: object,
) -> AccessEvent:
    path = key if key else BUCKET_PATH
    if len(path) > MAX_FIELD:
        raise BadRecord(f"object key longer than {MAX_FIELD} characters")
    if time_ms < 0:
        raise BadRecord("time before 1970")
    fields = {k: v for k, v in extra.items() if v is not None}
    try:
        return make_event(
            activity, uid=uid, time=time_ms, user_name=user, attribution=attribution, device=device,
            source=Source.S3, share=bucket, file_path=path, names_escaped=escaped, s3_operation=operation,
            **fields,
        )
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        raise BadRecord(f"event out of range: {exc}") from None
