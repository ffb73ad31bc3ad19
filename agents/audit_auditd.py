"""Linux audit.log records joined into attributed file operations.

One syscall writes several records with the same event id, ``msg=audit(<sec>.<ms>:<serial>)``:
SYSCALL (pid, uid, auid, exe, success), CWD, one PATH per name it touched (``nametype`` PARENT,
CREATE, DELETE, NORMAL), PROCTITLE and a closing EOE. Records of different events interleave, a
log can end in the middle of an event, and values with spaces or non-ASCII bytes are written as
unquoted hex (``name=2F7372762F612062``). With ``log_format = ENRICHED`` auditd appends resolved
names after a 0x1d separator (``AUID="alice" UID="root"``); they are used when present.

The operation comes from the PATH name types rather than syscall numbers, so it is the same on
every architecture: a DELETE and a CREATE item is a rename (old, new), CREATE alone a create,
DELETE alone a delete, NORMAL an open for writing, a truncate or an attribute change.
"""
from __future__ import annotations

import os
import pwd
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from dwcore.agents.audit_record import ATTR, CREATE, DELETE, OTHER, READ, RENAME, UPDATE, AuditRecord, Rejected
from dwcore.schemas.paths import name_text

_HEAD = re.compile(rb"^(?:node=(\S+) )?type=(\w+) msg=audit\((\d+)\.(\d+):(\d+)\): ?(.*)$", re.S)
_FIELD = re.compile(rb'(\w+)=("[^"]*"|\S+)')
_HEXABLE = frozenset({b"name", b"cwd", b"exe", b"comm", b"key", b"proctitle"})
_HEX = re.compile(rb"^(?:[0-9A-F]{2})+$")
UNSET_AUID = "4294967295"
_WANTED = frozenset({b"SYSCALL", b"PATH", b"CWD", b"PROCTITLE", b"EOE"})

# Syscall numbers for the name shown to the admin (x86_64 and aarch64); the operation itself comes
# from the PATH name types.
SYSCALLS = {
    "c000003e": {2: "open", 257: "openat", 85: "creat", 82: "rename", 264: "renameat", 316: "renameat2",
                 87: "unlink", 263: "unlinkat", 84: "rmdir", 83: "mkdir", 258: "mkdirat", 76: "truncate",
                 77: "ftruncate", 90: "chmod", 91: "fchmod", 268: "fchmodat", 92: "chown", 93: "fchown",
                 94: "lchown", 260: "fchownat", 86: "link", 265: "linkat", 88: "symlink", 266: "symlinkat",
                 188: "setxattr", 189: "lsetxattr", 190: "fsetxattr", 437: "openat2"},
    "c00000b7": {56: "openat", 38: "renameat", 276: "renameat2", 35: "unlinkat", 34: "mkdirat", 45: "truncate",
                 46: "ftruncate", 53: "fchmodat", 52: "fchmod", 54: "fchownat", 55: "fchown", 37: "linkat",
                 36: "symlinkat", 5: "setxattr", 6: "lsetxattr", 7: "fsetxattr", 437: "openat2"},
}
_ATTR_CALLS = frozenset({"chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "setxattr",
                         "lsetxattr", "fsetxattr"})
_O_ACCMODE, _O_TRUNC = 0o3, 0o1000


def _uid_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _value(key: bytes, raw: bytes) -> bytes:
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return raw[1:-1]
    if key in _HEXABLE and _HEX.match(raw):
        return bytes.fromhex(raw.decode())
    return raw


def parse_fields(body: bytes) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(raw fields, enriched fields) of one record's body."""
    plain, _, enriched = body.partition(b"\x1d")
    fields = {k: _value(k, v) for k, v in _FIELD.findall(plain)}
    extra = {k: _value(k, v) for k, v in _FIELD.findall(enriched)}
    return fields, extra


@dataclass
class _Event:
    line: int
    time: int
    serial: str
    syscall: dict[bytes, bytes] | None = None
    enriched: dict[bytes, bytes] = field(default_factory=dict)
    cwd: bytes | None = None
    paths: list[dict[bytes, bytes]] = field(default_factory=list)


class AuditdParser:
    """Feed lines in log order; complete events come out as records. Not thread-safe."""

    def __init__(self, *, max_pending: int = 10_000, uid_name: Callable[[int], str] = _uid_name) -> None:
        self._pending: OrderedDict[str, _Event] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()  # recently closed serials: late records are ignored
        self._max_pending = max_pending
        self._uid_name = uid_name
        self._names: dict[int, str] = {}
        self.rejected: list[Rejected] = []
        self.counters = {"lines": 0, "records": 0, "rejected": 0, "ignored": 0}

    def feed(self, line: bytes, lineno: int = 0) -> list[AuditRecord]:
        self.counters["lines"] += 1
        line = line.rstrip(b"\r\n")
        if not line.strip():
            return []
        m = _HEAD.match(line)
        if m is None:
            self._reject(lineno, "not an audit record (no type=... msg=audit(time:serial):)", line)
            return []
        _node, rtype, sec, ms, serial_b, body = m.groups()
        if rtype not in _WANTED:
            self.counters["ignored"] += 1
            return []
        serial = serial_b.decode()
        if serial in self._done:
            return []
        ev = self._pending.get(serial)
        if ev is None:
            ev = self._pending[serial] = _Event(lineno, int(sec) * 1000 + int(ms[:3].ljust(3, b"0")), serial)
        if rtype == b"EOE":
            return self._close(serial)
        fields, extra = parse_fields(body)
        if rtype == b"SYSCALL":
            ev.syscall, ev.enriched = fields, extra
        elif rtype == b"CWD":
            ev.cwd = fields.get(b"cwd")
        elif rtype == b"PATH":
            ev.paths.append(fields)
        out: list[AuditRecord] = []
        while len(self._pending) > self._max_pending:
            out += self._close(next(iter(self._pending)))
        return out

    def flush(self, older_than_ms: int | None = None) -> list[AuditRecord]:
        """Close events still open (the log ended mid-event, or EOE is late): all of them, or those
        that started before ``older_than_ms``."""
        out: list[AuditRecord] = []
        for serial in list(self._pending):
            if older_than_ms is None or self._pending[serial].time < older_than_ms:
                out += self._close(serial)
        return out

    def _reject(self, lineno: int, reason: str, text: bytes = b"") -> None:
        self.counters["rejected"] += 1
        self.rejected.append(Rejected(lineno, reason, name_text(text[:300])[0]))
        del self.rejected[:-1000]  # keep the most recent; the counter keeps the total

    def _close(self, serial: str) -> list[AuditRecord]:
        ev = self._pending.pop(serial, None)
        self._done[serial] = None
        while len(self._done) > 4 * self._max_pending:
            self._done.popitem(last=False)
        if ev is None:
            return []
        if ev.syscall is None:
            if ev.paths:
                self._reject(ev.line, f"event {serial}: PATH records without their SYSCALL record (partial event)")
            return []
        if not ev.paths:
            self._reject(ev.line, f"event {serial}: SYSCALL without PATH records (partial event or not a file call)")
            return []
        rec = self._record(ev)
        if rec is None:
            return []
        self.counters["records"] += 1
        return [rec]

    def _name(self, uid_raw: bytes) -> tuple[str, str]:
        uid = uid_raw.decode(errors="replace")
        if uid == UNSET_AUID or not uid.isdigit():
            return (uid if uid != UNSET_AUID else "", "unset" if uid == UNSET_AUID else uid)
        n = int(uid)
        name = self._names.get(n)
        if name is None:
            name = self._names[n] = self._uid_name(n)
        return uid, name

    def _abs(self, raw: bytes, cwd: bytes | None) -> bytes:
        if raw.startswith(b"/") or not cwd:
            return os.path.normpath(raw) if raw.startswith(b"/") else raw
        return os.path.normpath(os.path.join(cwd, raw))

    def _record(self, ev: _Event) -> AuditRecord | None:
        sc = ev.syscall or {}
        arch = sc.get(b"arch", b"").decode(errors="replace")
        try:
            number = int(sc.get(b"syscall", b"-1"))
        except ValueError:
            number = -1
        call = SYSCALLS.get(arch, {}).get(number) or sc.get(b"SYSCALL", ev.enriched.get(b"SYSCALL", b"")).decode(
            errors="replace") or f"syscall {number}"
        kinds: dict[str, list[bytes]] = {}
        for p in ev.paths:
            name = p.get(b"name")
            if name is None or name == b"(null)":
                continue
            kind = p.get(b"nametype") or p.get(b"objtype") or b"UNKNOWN"  # objtype: kernels before 4.x
            kinds.setdefault(kind.decode(errors="replace"), []).append(name)
        deleted, created, normal = kinds.get("DELETE", []), kinds.get("CREATE", []), kinds.get("NORMAL", [])
        new: bytes | None = None
        if deleted and created:
            op, path, new = RENAME, deleted[0], created[-1]
        elif created:
            op, path = CREATE, created[0]
        elif deleted:
            op, path = DELETE, deleted[0]
        elif normal:
            path = normal[0]
            if call in _ATTR_CALLS:
                op = ATTR
            else:
                op = UPDATE if call in ("truncate", "ftruncate") else self._open_op(sc, call)
        else:
            self._reject(ev.line, f"event {ev.serial}: no usable PATH name (only {sorted(kinds) or 'empty'} items)")
            return None
        path_text, esc1 = name_text(self._abs(path, ev.cwd))
        new_text, esc2 = name_text(self._abs(new, ev.cwd)) if new is not None else (None, False)
        uid, uid_name = self._name(sc.get(b"uid", b""))
        auid, auid_name = self._name(sc.get(b"auid", b""))
        if b"UID" in ev.enriched:
            uid_name = ev.enriched[b"UID"].decode(errors="replace")
        if b"AUID" in ev.enriched:
            auid_name = ev.enriched[b"AUID"].decode(errors="replace")
        exe = sc.get(b"exe")
        try:
            pid: int | None = int(sc.get(b"pid", b""))
        except ValueError:
            pid = None
        return AuditRecord(
            source="auditd", time=ev.time, operation=op, path=path_text, new_path=new_text,
            user_name=uid_name or "unknown", user_uid=uid, auid=auid, auid_name=auid_name,
            process_pid=pid, process_exe=name_text(exe)[0] if exe and exe != b"(null)" else None,
            syscall=call, success=sc.get(b"success", b"yes") == b"yes", event_id=ev.serial,
            names_escaped=esc1 or esc2,
        )

    @staticmethod
    def _open_op(sc: dict[bytes, bytes], call: str) -> str:
        if call not in ("open", "openat", "openat2", "creat"):
            return OTHER
        if call in ("creat", "openat2"):  # openat2's flags sit behind a pointer: assume a write
            return UPDATE
        raw = sc.get(b"a1" if call == "open" else b"a2", b"0")
        try:
            flags = int(raw, 16)
        except ValueError:
            return UPDATE
        return UPDATE if flags & _O_ACCMODE or flags & _O_TRUNC else READ


def parse_lines(lines: Iterable[bytes], parser: AuditdParser | None = None) -> Iterator[AuditRecord]:
    """Every record of a finished log (open events are closed at the end)."""
    parser = parser or AuditdParser()
    for n, line in enumerate(lines, 1):
        yield from parser.feed(line, n)
    yield from parser.flush()
