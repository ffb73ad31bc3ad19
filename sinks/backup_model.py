"""The backup controller's records: what crosses its boundaries (journal, bucket manifest, ClickHouse).

Times are epoch milliseconds like events and alerts. A manifest entry names one file of the
protected tree and the exact S3 version that holds its content; the file name is kept in the
lossless text form of ``schemas.paths`` (``escaped`` says so) because S3 keys are text.
"""
from __future__ import annotations

import msgspec

MANIFEST_DIR = ".dataward/manifests"  # bucket-level, outside every data prefix
SHA_META = "sha256"  # user metadata on every object: the content hash restore verifies
ESCAPED_META = "dw-escaped"  # "1" when the key is the escaped text form of a non-UTF-8 name
SUSPECT_TAG = "dataward-suspect"


class ManifestEntry(msgspec.Struct, frozen=True, kw_only=True):
    key: str  # S3 key
    path: str  # path relative to the backed-up root, text form
    escaped: bool = False
    size: int
    sha256: str
    version_id: str
    uploaded_at: int  # when the version was committed (PUT or multipart complete returned)
    uploaded_in_run: bool = False  # False: unchanged since an earlier run (incremental-forever)


class RunManifest(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    bucket: str
    prefix: str
    root: str
    mode: str  # once | continuous | scheduled
    started_at: int
    finished_at: int
    status: str  # complete | halted | checkpoint
    files: list[ManifestEntry]


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ClickHouse ``backup_runs`` (schemas/ddl.py BACKUP_RUN_COLUMNS, same order); a
    later row of the same run (higher ``updated_at``) replaces it."""

    run_id: str
    started_at: int
    updated_at: int
    finished_at: int | None
    mode: str  # once | continuous | scheduled
    source: str  # the backed-up root
    bucket: str
    prefix: str
    status: str  # complete | checkpoint | halted | partial
    files: int  # files in the run's manifest
    bytes: int  # bytes uploaded by the run
    skipped: int  # files in the manifest not uploaded by this run (unchanged)
    errors: int
    manifest_key: str
    reason: str  # why it halted, if it did


class ManifestRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ClickHouse ``backup_manifest``: a version dataward wrote; a later row with a
    higher ``rev`` replaces it (how a version is flagged suspect after the fact)."""

    bucket: str
    key: str
    version_id: str
    run_id: str
    path: str
    size: int
    sha256: str
    uploaded_at: int
    suspect: bool
    incident: str
    rev: int


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ClickHouse ``backup_audit``: halts, resumes, seals, with who and when."""

    time: int
    action: str  # halt | resume | seal | hook
    incident: str
    who: str
    detail: str  # JSON


class Incident(msgspec.Struct, frozen=True, kw_only=True):
    """A halt: the alert that caused it and when each step happened."""

    uid: str
    rule: str
    severity: str
    user: str
    first_seen: int
    detected_at: int
    received_at: int  # when the controller got the alert
    halted_at: int  # when the last in-flight commit had finished; nothing was written after it
    resumed_at: int = 0
    resumed_by: str = ""
    aborted_uploads: int = 0
    suspect_versions: int = 0


class Halted(Exception):
    """Raised inside the uploader when the gate is closed: stop, write nothing more."""
