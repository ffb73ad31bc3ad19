"""S3 rules, per principal: what attacks on buckets look like as API calls.

Each rule is a pure ``RuleSpec`` over S3 events (``source == "s3"``), counted by the shared burst
machinery, so thresholds, windows and escalation are policy data like every other rule; a
principal's findings join one incident like a file user's (see ``detectors.incident``).

The sources name the same call differently (access log ``BATCH.DELETE.OBJECT``, CloudTrail
``DeleteObjects``, notification ``ObjectRemoved:Delete``); ``api`` folds them into one vocabulary
before any rule looks. Deletes count per key: a multi-object delete arrives as one event per key
from the access log (``BATCH.DELETE.OBJECT``), from notifications (one record per key) and from
CloudTrail when the record lists the keys.

Mass reads are weighed by bytes: each GetObject counts ``bytes_read / EXFIL_UNIT`` units, the
fraction rounded up or down deterministically from the event uid, so the count over many small
reads converges on the true total without keeping a byte sum in the state.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from dwcore.detectors.explain import plural
from dwcore.detectors.features import Facts
from dwcore.detectors.spec import RuleSpec
from dwcore.schemas.event import AccessEvent, Activity, Source

EXFIL_UNIT = 64 << 20  # bytes per counted unit of the exfiltration rule (64 MiB)

_API = {
    "REST.PUT.OBJECT": "PutObject", "REST.POST.OBJECT": "PostObject", "REST.POST.UPLOAD":
    "CompleteMultipartUpload", "REST.COPY.OBJECT": "CopyObject", "REST.COPY.PART": "UploadPartCopy",
    "REST.COPY.OBJECT_GET": "CopyObjectSource", "REST.GET.OBJECT": "GetObject",
    "REST.DELETE.OBJECT": "DeleteObject", "BATCH.DELETE.OBJECT": "DeleteObject",
    "S3.EXPIRE.OBJECT": "LifecycleExpiration", "S3.CREATE.DELETEMARKER": "LifecycleDeleteMarker",
    "ObjectCreated:Put": "PutObject", "ObjectCreated:Post": "PostObject", "ObjectCreated:Copy": "CopyObject",
    "ObjectCreated:CompleteMultipartUpload": "CompleteMultipartUpload",
    "ObjectRemoved:Delete": "DeleteObject", "ObjectRemoved:DeleteMarkerCreated": "DeleteMarker",
    "LifecycleExpiration:Delete": "LifecycleExpiration",
    "LifecycleExpiration:DeleteMarkerCreated": "LifecycleDeleteMarker",
    "DeleteObjects": "DeleteObject",
}
_WRITES = frozenset({"PutObject", "PostObject", "CopyObject", "CompleteMultipartUpload", "UploadPart",
                     "UploadPartCopy"})
_MARKERS = frozenset({"DeleteMarker", "LifecycleDeleteMarker"})
_LIFECYCLE = frozenset({"LifecycleExpiration", "LifecycleDeleteMarker"})
# config_change values that weaken a bucket's defences. Access logs do not show the request body, so
# their "versioning:changed" cannot tell suspending from enabling and is not counted here.
_DEFENCE_OFF = frozenset({
    "versioning:Suspended", "mfa_delete:Disabled", "logging:Disabled", "lifecycle:expiration",
    "object_lock:default_retention_removed", "retention:bypass_governance", "encryption:put",
    "encryption:deleted", "replication:deleted", "public_access_block:deleted", "bucket:deleted",
})
# Ransom notes: the names extortion crews leave beside encrypted or deleted data.
_NOTE = re.compile(
    r"(^|[_\-. !])(read[_\-. ]?me|how[_\-. ]?to|restore|recover|decrypt|ransom|warning|attention|"
    r"your[_\-. ]?files|instructions?)([_\-. !]|$).*\.(txt|html?|md|hta|rtf)$|"
    r"^_?readme\.txt$|^!+.*(read|decrypt|restore).*!*\.(txt|html?)$",
    re.IGNORECASE,
)


def api(ev: AccessEvent) -> str:
    """The API name of an S3 event, whichever source reported it."""
    op = ev.s3_operation or ""
    return _API.get(op, op)


def _s3(ev: AccessEvent) -> bool:
    return ev.source == Source.S3


def is_marker(ev: AccessEvent) -> bool:
    return _s3(ev) and api(ev) in _MARKERS


def is_delete(ev: AccessEvent) -> bool:
    """An object removed by a principal (a marker or a version); lifecycle expirations are S3's own."""
    return (_s3(ev) and ev.activity_id == Activity.DELETE and ev.file_path != "/"
            and api(ev) not in _LIFECYCLE)


def is_version_purge(ev: AccessEvent) -> bool:
    """A specific version deleted for good (DeleteObjectVersion): the copy that recovery needs."""
    return is_delete(ev) and bool(ev.s3_version_id) and api(ev) not in _MARKERS


def is_overwrite(ev: AccessEvent) -> bool:
    return _s3(ev) and ev.activity_id == Activity.UPDATE


def is_sse_c_write(ev: AccessEvent) -> bool:
    return _s3(ev) and ev.sse == "SSE-C" and api(ev) in _WRITES


def is_foreign_kms(ev: AccessEvent) -> bool:
    return _s3(ev) and bool(ev.kms_key_account)


def defence_changes(ev: AccessEvent) -> list[str]:
    if not _s3(ev) or not ev.config_change:
        return []
    return [c for c in ev.config_change.split(",") if c in _DEFENCE_OFF]


def is_ransom_note(ev: AccessEvent) -> bool:
    if not _s3(ev) or ev.activity_id not in (Activity.CREATE, Activity.UPDATE):
        return False
    return bool(_NOTE.search(ev.file_path.rsplit("/", 1)[-1]))


def exfil_units(ev: AccessEvent) -> int:
    if not _s3(ev) or api(ev) != "GetObject" or not ev.bytes_read:
        return 0
    whole, rest = divmod(ev.bytes_read, EXFIL_UNIT)
    # Deterministic rounding: the same event always weighs the same, and the expected weight is exact.
    return whole + (1 if uuid.uuid5(uuid.NAMESPACE_OID, ev.uid).int % EXFIL_UNIT < rest else 0)


def is_protected_target(ev: AccessEvent) -> bool:
    """Anything destructive on a protected bucket (the bucket list is the rule's ``buckets``)."""
    return (is_delete(ev) or is_overwrite(ev) or is_sse_c_write(ev) or is_foreign_kms(ev)
            or bool(defence_changes(ev)) or (_s3(ev) and ev.activity_id == Activity.SET_ATTRIBUTES
                                              and bool(ev.config_change)))


def _note(ev: AccessEvent) -> str:
    changes = defence_changes(ev)
    if changes:
        return f"{api(ev)} {','.join(changes)} on {ev.share}"
    if ev.sse == "SSE-C":
        return "SSE-C (customer-provided key)"
    if ev.kms_key_account:
        return f"KMS key of account {ev.kms_key_account}"
    return ""


def _spec(name: str, match: Callable[[AccessEvent], bool], verb: str, unit: str, signal: str,
          weight: Callable[[AccessEvent], int] | None = None) -> RuleSpec:
    def key(ev: AccessEvent, facts: Facts) -> str | None:
        return "" if match(ev) else None

    def amount(count: int) -> str:
        return f"{count * EXFIL_UNIT / (1 << 30):.1f} GiB" if weight is not None else plural(count, unit)

    def sentence(user: str, count: int, shares: list[str]) -> str:
        return f"{user} {verb} {amount(count)} in bucket {', '.join(shares) or '?'}."

    # Every matcher here starts with _s3(ev): file events skip these rules up front.
    return RuleSpec(name, signal, key, _note, weight=weight, sentence=sentence, amount=amount, s3_only=True)


def _weighted(match: Callable[[AccessEvent], int]) -> Callable[[AccessEvent], bool]:
    return lambda ev: match(ev) > 0


def _has_defence_change(ev: AccessEvent) -> bool:
    return bool(defence_changes(ev))


SPECS: tuple[RuleSpec, ...] = (
    _spec("s3_delete_storm", is_delete, "deleted", "object", "deletes"),
    _spec("s3_delete_markers", is_marker, "put delete markers on", "object", "delete markers"),
    _spec("s3_version_purge", is_version_purge, "permanently deleted versions of", "object", "version deletes"),
    _spec("s3_overwrite_storm", is_overwrite, "overwrote", "object", "overwrites"),
    _spec("s3_sse_c_reencryption", is_sse_c_write, "wrote with a customer-provided key (SSE-C)", "object",
          "SSE-C writes"),
    _spec("s3_foreign_kms_key", is_foreign_kms, "encrypted with a KMS key of another account", "object",
          "foreign-key writes"),
    _spec("s3_defense_off", _has_defence_change, "turned off or weakened bucket defences", "change",
          "defence changes"),
    _spec("s3_ransom_note", is_ransom_note, "uploaded ransom-note-like objects", "object", "ransom notes"),
    _spec("s3_exfiltration", _weighted(exfil_units), "read", "unit", "64 MiB units read", weight=exfil_units),
    _spec("s3_protected_bucket", is_protected_target, "changed destructively", "object",
          "destructive calls on a protected bucket"),
)
