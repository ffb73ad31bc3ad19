"""Samba ``vfs_full_audit`` lines from syslog, as attributed file operations.

The module writes one syslog line per VFS call: ``<prefix>|<operation>|ok|<arguments>`` (or
``fail (<error>)``), where the prefix is the share's ``full_audit:prefix`` with Samba's macros
expanded. dataward's documented setting is ``%u|%I|%m|%S`` (user, client IP, client machine,
share); another prefix is parsed when it is given in the same macro form. Paths are relative to
the share's root unless Samba printed them absolute; ``shares`` maps a share name to its local
directory so the records join with the watcher's absolute paths.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime

from dwcore.agents.audit_record import ATTR, CREATE, DELETE, OTHER, READ, RENAME, UPDATE, AuditRecord, Rejected
from dwcore.schemas.paths import name_text

DEFAULT_PREFIX = "%u|%I|%m|%S"
_MACROS = {"%u": "user", "%U": "user", "%I": "ip", "%m": "machine", "%S": "share", "%M": "machine"}
_RFC3164 = re.compile(rb"^(?:<\d+>)?([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) ([^\s:\[]+)(?:\[\d+\])?: (.*)$", re.S)
_ISO = re.compile(rb"^(?:<\d+>\d? ?)?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) (\S+) "
                  rb"([^\s:\[]+)(?:\[\d+\])?: (.*)$", re.S)
_SIMPLE = {"renameat": RENAME, "rename": RENAME, "unlinkat": DELETE, "unlink": DELETE, "rmdir": DELETE,
           "mkdirat": CREATE, "mkdir": CREATE, "pwrite": UPDATE, "write": UPDATE, "pwrite_send": UPDATE,
           "ftruncate": UPDATE, "fallocate": UPDATE, "fchmod": ATTR, "fchown": ATTR, "fntimes": ATTR,
           "fset_nt_acl": ATTR, "fsetxattr": ATTR, "linkat": CREATE, "symlinkat": CREATE, "pread": READ,
           "pread_send": READ, "read": READ}
# Calls that name no file change (or no file): counted as ignored, neither records nor rejections.
_NOT_FILE_OPS = frozenset({"connect", "disconnect", "connectpath", "disk_free", "get_quota", "statvfs", "realpath",
                           "fstat", "stat", "lstat", "fstatat", "get_nt_acl", "fget_nt_acl", "get_nt_acl_at",
                           "opendir", "fdopendir", "readdir", "closedir", "close", "chdir", "getwd",
                           "fs_capabilities", "readdir_attr", "get_dos_attributes", "fget_dos_attributes"})
_CREATE_DISPOSITION = {"create": CREATE, "open": READ, "open_if": UPDATE, "overwrite": UPDATE,
                       "overwrite_if": UPDATE, "supersede": UPDATE}
_WRITE_ACCESS = 0x2 | 0x4 | 0x10000 | 0x40000000  # FILE_WRITE_DATA, FILE_APPEND_DATA, DELETE, GENERIC_WRITE


def prefix_fields(prefix: str) -> list[str]:
    return [_MACROS.get(part.strip(), "") for part in prefix.split("|")]


class SambaParser:
    def __init__(self, *, prefix: str = DEFAULT_PREFIX, shares: Mapping[str, str] | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self._fields = prefix_fields(prefix)
        self._shares = {k: os.fsencode(v) for k, v in (shares or {}).items()}
        self._now = now
        self.rejected: list[Rejected] = []
        self.counters = {"lines": 0, "records": 0, "rejected": 0, "ignored": 0}

    def _reject(self, lineno: int, reason: str, text: bytes) -> None:
        self.counters["rejected"] += 1
        self.rejected.append(Rejected(lineno, reason, name_text(text[:300])[0]))
        del self.rejected[:-1000]

    def _time(self, stamp: bytes) -> int | None:
        text = stamp.decode()
        try:
            if text[0].isdigit():
                return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
            now = self._now()
            year = datetime.fromtimestamp(now).year
            dt = datetime.strptime(f"{year} {text}", "%Y %b %d %H:%M:%S")
            if dt.timestamp() > now + 86400:  # a December line read in January
                dt = dt.replace(year=year - 1)
            return int(dt.timestamp() * 1000)
        except ValueError:
            return None

    def feed(self, line: bytes, lineno: int = 0) -> list[AuditRecord]:
        self.counters["lines"] += 1
        line = line.rstrip(b"\r\n")
        if not line.strip():
            return []
        m = _ISO.match(line) or _RFC3164.match(line)
        if m is None:
            self._reject(lineno, "not a syslog line (timestamp host program: message)", line)
            return []
        stamp, _host, _prog, msg = m.groups()
        ts = self._time(stamp)
        if ts is None:
            self._reject(lineno, f"bad timestamp {stamp.decode(errors='replace')!r}", line)
            return []
        parts = msg.split(b"|")
        n = len(self._fields)
        if len(parts) < n + 3:
            self._reject(lineno, f"not a full_audit line: expected {n} prefix fields, operation, status and "
                                 f"arguments separated by '|', got {len(parts)} fields", line)
            return []
        pre = {k: parts[i].decode(errors="replace") for i, k in enumerate(self._fields) if k}
        op_raw, status, args = parts[n].decode(errors="replace"), parts[n + 1], parts[n + 2 :]
        if not (status == b"ok" or status.startswith(b"fail")):
            self._reject(lineno, f"status is {status[:40].decode(errors='replace')!r}, not ok or fail", line)
            return []
        if op_raw in _NOT_FILE_OPS:
            self.counters["ignored"] += 1
            return []
        user = pre.get("user", "")
        if not user:
            self._reject(lineno, "no user in the prefix (set full_audit:prefix = %u|%I|%m|%S)", line)
            return []
        parsed = self._operation(op_raw, args)
        if parsed is None:
            self._reject(lineno, f"operation {op_raw!r} has no path argument", line)
            return []
        op, path, new = parsed
        share = pre.get("share")
        path_text, e1 = name_text(self._local(path, share))
        new_text, e2 = name_text(self._local(new, share)) if new is not None else (None, False)
        self.counters["records"] += 1
        return [AuditRecord(
            source="samba", time=ts, operation=op, path=path_text, new_path=new_text, user_name=user,
            syscall=op_raw, success=status == b"ok", client_ip=pre.get("ip") or None, share=share,
            machine=pre.get("machine") or None, names_escaped=e1 or e2,
        )]

    def _operation(self, op: str, args: list[bytes]) -> tuple[str, bytes, bytes | None] | None:
        args = [a for a in args if a != b""] or args
        if op in ("openat", "open"):
            if len(args) >= 2 and args[0] in (b"r", b"w"):
                return (UPDATE if args[0] == b"w" else READ), args[-1], None
            return (READ, args[-1], None) if args and args[-1] else None
        if op == "create_file":
            # access mask | file or directory | disposition | path
            if len(args) < 4:
                return None
            disposition = _CREATE_DISPOSITION.get(args[2].decode(errors="replace"), OTHER)
            try:
                mask = int(args[0], 16)
            except ValueError:
                mask = 0
            if disposition == READ and mask & _WRITE_ACCESS:
                disposition = UPDATE
            return disposition, args[3], None
        if op in ("renameat", "rename"):
            return (RENAME, args[0], args[1]) if len(args) >= 2 else None
        if not args or not args[-1]:
            return None
        return _SIMPLE.get(op, OTHER), args[-1], None

    def _local(self, path: bytes, share: str | None) -> bytes:
        if path.startswith(b"/"):
            return os.path.normpath(path)
        root = self._shares.get(share or "")
        return os.path.normpath(os.path.join(root, path)) if root else path


def parse_lines(lines: Iterable[bytes], parser: SambaParser | None = None) -> Iterator[AuditRecord]:
    parser = parser or SambaParser()
    for n, line in enumerate(lines, 1):
        yield from parser.feed(line, n)
