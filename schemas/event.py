"""The access event envelope: one shape for file and S3 activity.

Aligned with OCSF File System Activity (class_uid 1001): ``time`` is epoch milliseconds and
``activity_id`` uses OCSF's ids. Field names are flat and equal the ClickHouse column names, so
a decoded event maps to a row without renaming. ECS-style meaning where OCSF is silent
(``file_path`` ~ ``file.path``, ``user_name`` ~ ``user.name``).
"""
from __future__ import annotations

import enum
from typing import Annotated

import msgspec

OCSF_FILE_ACTIVITY = 1001


class Activity(enum.IntEnum):
    """OCSF File System Activity ids (1001)."""

    UNKNOWN = 0
    CREATE = 1
    READ = 2
    UPDATE = 3
    DELETE = 4
    RENAME = 5
    SET_ATTRIBUTES = 6
    SET_SECURITY = 7
    GET_ATTRIBUTES = 8
    GET_SECURITY = 9
    ENCRYPT = 10
    DECRYPT = 11
    MOUNT = 12
    UNMOUNT = 13
    OPEN = 14
    OTHER = 99

    @property
    def label(self) -> str:
        """OCSF activity_name: 'Create', 'Set Attributes', ..."""
        # Looked up, not rebuilt: it runs twice for every event an agent builds.
        # Keyed by the plain int: hashing the enum member itself is a Python-level call.
        return _LABELS.get(self._value_) or self.name.replace("_", " ").title()


_LABELS: dict[int, str] = {a._value_: a.name.replace("_", " ").title() for a in Activity}


class Attribution(enum.StrEnum):
    """How the acting user was determined; an analyst weighs owner-fallback lower than auditd."""

    OWNER = "owner"  # file owner at the time of the event: a fallback, not who-data
    AUDITD = "auditd"
    SAMBA = "samba"
    CLOUDTRAIL = "cloudtrail"
    S3_ACCESS_LOG = "s3_access_log"
    AGENT = "agent"  # the agent itself (alarms, heartbeats)
    UNKNOWN = "unknown"


class Source(enum.StrEnum):
    FILE = "file"
    S3 = "s3"
    AGENT = "agent"


NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=253402300799999)]  # up to 9999-12-31
Entropy = Annotated[float, msgspec.Meta(ge=0.0, le=8.0)]  # bits per byte
Ratio = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


# gc=False: every field is a scalar, so an event can never be part of a reference cycle; untracked,
# the 50k events of a sink batch no longer make each garbage-collector pass walk all of them.
class AccessEvent(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, omit_defaults=True,
                  gc=False):
    """Who did what to which file or object, when and how.

    ``alarm`` is set on events the agent raises about itself (e.g. ``queue_overflow``: the kernel
    dropped events, so the record of this share has a gap); such events use activity OTHER.

    File names are bytes on Linux. A name that is valid UTF-8 is carried as is; one that is not is
    carried in the escaped text form of ``schemas.paths`` (``\\xNN`` per invalid byte, ``\\\\`` for a
    backslash) with ``names_escaped`` set, so it round-trips to the exact bytes.

    Field groups (the contract between agents and detectors):
    - who: ``user_name``/``user_uid`` (the acting user; for S3 the principal), ``attribution`` (how
      it was determined; ``owner`` is a guess), ``auid``/``auid_name`` (the login user auditd
      reports), ``process_pid``/``process_exe``, ``client_ip`` (SMB client, S3 requester);
    - what was written (creates and overwrites; None when not sampled): ``entropy`` (bits/byte of
      the sample), ``printable_ratio``, ``magic_type`` (type from magic bytes: "pdf", "zip", "png",
      "text", ... or "unknown"), ``ext_mismatch`` (the type disagrees with the extension), and against
      the previous sample of the same path ``prev_entropy``/``prev_magic_type``; ``partial_encryption``
      is "header" (the head turned random, the rest unchanged) or "intermittent" (small random blocks
      among unchanged data); ``sample_skipped`` says why a write was not sampled (e.g. "budget");
    - marks: ``canary`` (a decoy file was touched), ``reconciled`` (found by a rescan, not seen live);
    - S3: ``share`` is the bucket and ``file_path`` the key; ``s3_operation`` the API or log
      operation, ``s3_version_id``, ``sse`` ("SSE-C", "aws:kms", "AES256"), ``kms_key_account`` (the
      account that owns the KMS key, when another), ``bytes_read`` (GetObject bytes sent),
      ``config_change`` (for bucket-configuration calls, e.g. "versioning:Suspended").
    """

    uid: NonEmpty
    time: EpochMs
    activity_id: Activity
    activity_name: str
    user_name: NonEmpty
    user_uid: str = ""
    attribution: Attribution = Attribution.OWNER
    device: NonEmpty
    source: Source = Source.FILE
    share: str = ""
    file_path: NonEmpty
    file_new_path: str | None = None
    file_size: Annotated[int, msgspec.Meta(ge=0)] | None = None
    bytes_written: Annotated[int, msgspec.Meta(ge=0)] | None = None
    entropy: Entropy | None = None
    mime_type: str | None = None
    alarm: str | None = None
    message: str | None = None
    class_uid: int = OCSF_FILE_ACTIVITY
    names_escaped: bool = False
    auid: str = ""
    auid_name: str = ""
    process_pid: Annotated[int, msgspec.Meta(ge=0)] | None = None
    process_exe: str | None = None
    client_ip: str | None = None
    printable_ratio: Ratio | None = None
    magic_type: str | None = None
    ext_mismatch: bool | None = None
    prev_entropy: Entropy | None = None
    prev_magic_type: str | None = None
    partial_encryption: str | None = None
    sample_skipped: str | None = None
    canary: bool = False
    reconciled: bool = False
    s3_operation: str | None = None
    s3_version_id: str | None = None
    sse: str | None = None
    kms_key_account: str | None = None
    bytes_read: Annotated[int, msgspec.Meta(ge=0)] | None = None
    config_change: str | None = None

    def __post_init__(self) -> None:
        # The pair must agree, or a SOC query on activity_name would miss rows.
        if self.activity_name != _LABELS[self.activity_id]:  # every Activity has its label there
            raise ValueError(
                f"activity_name {self.activity_name!r} does not match activity_id "
                f"{int(self.activity_id)} ({self.activity_id.label!r})"
            )
        if self.activity_id == Activity.RENAME and not self.file_new_path:
            raise ValueError("a Rename event needs file_new_path")


def make_event(activity: Activity, **fields: object) -> AccessEvent:
    """Build an event with the activity id/name pair filled in consistently."""
    return AccessEvent(activity_id=activity, activity_name=activity.label, **fields)  # type: ignore[arg-type]
