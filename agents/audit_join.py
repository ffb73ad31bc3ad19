"""Join watcher events with audit records: who did it, from auditd or Samba, else the owner.

The stage reads new audit lines itself at the start of each batch (no extra thread), indexes the
records by path, and gives each event the record of the same path and a compatible operation
closest in time within ``window_ms``. When some events found no record yet it waits up to
``wait_ms`` once per batch for the audit log to catch up (auditd writes within milliseconds). An
event without a record keeps the owner fallback (``attribution=owner``): it is never held back
longer and never dropped.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

import msgspec

from dwcore.agents.audit_record import CREATE, DELETE, RENAME, UPDATE, AuditRecord
from dwcore.logfmt import kv
from dwcore.schemas.event import AccessEvent, Activity, Attribution

log = logging.getLogger(__name__)

_COMPATIBLE = {
    Activity.CREATE: frozenset({CREATE, UPDATE}),
    Activity.UPDATE: frozenset({UPDATE, CREATE}),
    Activity.DELETE: frozenset({DELETE}),
    Activity.RENAME: frozenset({RENAME}),
}
_PER_PATH = 8


class AuditSource:
    """A log follower and the parser for its format."""

    def __init__(self, name: str, follower, parser) -> None:  # duck-typed pair
        self.name = name
        self.follower = follower
        self.parser = parser

    def poll(self, now_ms: int) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        for line in self.follower.read():
            out += self.parser.feed(line)
        flush = getattr(self.parser, "flush", None)
        if flush is not None:
            out += flush(now_ms - 2000)  # an event whose EOE never came: close it after 2 s
        for rej in self.parser.rejected:
            log.warning("audit_line_rejected %s", kv(source=self.name, reason=rej.reason))
        self.parser.rejected.clear()
        return out


class AuditJoin:
    __name__ = "attribution"

    def __init__(self, sources: Sequence[AuditSource], *, window_ms: int = 2000, wait_ms: int = 50,
                 max_records: int = 200_000, clock: Callable[[], float] = time.time) -> None:
        self.sources = list(sources)
        self.window_ms = window_ms
        self.wait_ms = wait_ms
        self._clock = clock
        self._by_path: dict[str, deque[AuditRecord]] = {}
        self._order: deque[str] = deque()
        self._max = max_records
        self.counters = {"records": 0, "matched": 0, "fallback": 0}

    def add(self, records: Sequence[AuditRecord]) -> None:
        for rec in records:
            if not rec.success:
                continue
            q = self._by_path.get(rec.path)
            if q is None:
                q = self._by_path[rec.path] = deque(maxlen=_PER_PATH)
            q.append(rec)
            self._order.append(rec.path)
            self.counters["records"] += 1
        while len(self._order) > self._max:
            path = self._order.popleft()
            q = self._by_path.get(path)
            if q:
                q.popleft()
                if not q:
                    del self._by_path[path]

    def poll(self) -> None:
        now = int(self._clock() * 1000)
        for src in self.sources:
            self.add(src.poll(now))

    def match(self, ev: AccessEvent) -> AuditRecord | None:
        ops = _COMPATIBLE.get(ev.activity_id)
        q = self._by_path.get(ev.file_path)
        if ops is None or not q:
            return None
        best: AuditRecord | None = None
        best_key: tuple[int, int] | None = None
        for rec in q:
            if rec.operation not in ops or abs(rec.time - ev.time) > self.window_ms:
                continue
            if ev.activity_id == Activity.RENAME and rec.new_path and rec.new_path != ev.file_new_path:
                continue
            # Samba knows the SMB user and client; prefer it over smbd's own syscalls in auditd.
            key = (0 if rec.source == "samba" else 1, abs(rec.time - ev.time))
            if best_key is None or key < best_key:
                best, best_key = rec, key
        return best

    def __call__(self, batch: list[AccessEvent]) -> list[AccessEvent]:
        self.poll()
        wanted = [i for i, e in enumerate(batch) if e.activity_id in _COMPATIBLE and e.source == "file"]
        found: dict[int, AuditRecord] = {}
        # Wait only while the newest event is younger than wait_ms: a batch that already sat in the
        # watcher's buffer that long had its chance, and a share auditd does not cover costs nothing.
        newest = max((batch[i].time for i in wanted), default=0)
        while True:
            for i in wanted:
                if i not in found and (rec := self.match(batch[i])) is not None:
                    found[i] = rec
            if (len(found) == len(wanted) or not self.sources
                    or self._clock() * 1000 >= newest + self.wait_ms):
                break
            time.sleep(0.005)
            self.poll()
        self.counters["matched"] += len(found)
        self.counters["fallback"] += len(wanted) - len(found)
        if not found:
            return batch
        out = list(batch)
        for i, rec in found.items():
            out[i] = attribute(out[i], rec)
        return out


def attribute(ev: AccessEvent, rec: AuditRecord) -> AccessEvent:
    fields: dict[str, object] = {
        "user_name": rec.user_name or ev.user_name,
        "user_uid": rec.user_uid,
        "attribution": Attribution.SAMBA if rec.source == "samba" else Attribution.AUDITD,
    }
    if rec.auid:
        fields["auid"] = rec.auid
    if rec.auid_name:
        fields["auid_name"] = rec.auid_name
    if rec.process_pid is not None:
        fields["process_pid"] = rec.process_pid
    if rec.process_exe:
        fields["process_exe"] = rec.process_exe
    if rec.client_ip:
        fields["client_ip"] = rec.client_ip
    return msgspec.structs.replace(ev, **fields)
