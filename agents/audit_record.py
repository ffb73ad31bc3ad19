"""One attributed file operation from an audit source (auditd or Samba full_audit)."""
from __future__ import annotations

import msgspec

# Operations, as the join compares them with watcher activities.
CREATE, UPDATE, DELETE, RENAME, READ, ATTR, OTHER = "create", "update", "delete", "rename", "read", "attr", "other"


class AuditRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who did one operation on one path. ``path``/``new_path`` are in the text form of
    ``schemas.paths`` (``names_escaped`` when the bytes were not UTF-8)."""

    source: str  # "auditd" | "samba"
    time: int  # epoch ms
    operation: str
    path: str
    user_name: str
    new_path: str | None = None
    user_uid: str = ""
    auid: str = ""
    auid_name: str = ""
    process_pid: int | None = None
    process_exe: str | None = None
    syscall: str | None = None  # auditd: the syscall; samba: the VFS operation
    success: bool = True
    client_ip: str | None = None
    share: str | None = None
    machine: str | None = None
    event_id: str | None = None  # auditd serial
    names_escaped: bool = False


class Rejected(msgspec.Struct, frozen=True):
    """A line or event that could not be used, and why (shown to the admin, never silent)."""

    line: int  # 1-based line number of the (first) offending line; 0 when not known
    reason: str
    text: str = ""
