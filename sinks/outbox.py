"""The alert outbox: one durable lane per destination, in the data dir, so no alert is lost.

Each lane is a spool (CRC-framed records, one fsync per append, torn tail cut on open; see
agents/spool.py) holding the encoded alerts still owed to that destination. ``append`` returns
only once the alerts are on disk; the caller commits detector state after it, so a crash, an
exception or a restart either leaves the alert in the outbox or lets detection raise it again.
A record is acked (and its segment eventually deleted) once the destination took it with a 2xx
or refused it for good (then a copy stays in ``rejected.jsonl``). Unacked records are loaded
back on open and delivered again: at least once, with the same webhook-id/dedup_key.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from dwcore.agents.spool import RecordId, Spool
from dwcore.schemas.alert import Alert
from dwcore.schemas.codec import DecodeError, decode_alert, encode

log = logging.getLogger(__name__)

Item = tuple[RecordId, Alert]


class Lane:
    """One destination's queue: the spool on disk plus an in-memory copy of what is unacked."""

    def __init__(self, name: str, directory: Path, fsync: bool = True) -> None:
        self.name = name
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._spool = Spool(directory, fsync=fsync, segment_bytes=4 * 1024 * 1024)
        self._items: deque[Item] = deque()
        self._cond = threading.Condition()
        self.inflight = 0  # items taken by the deliverer but not yet acked
        for rid, _key, value in self._spool.iter_unacked():
            try:
                self._items.append((rid, decode_alert(value)))
            except DecodeError as exc:
                # Written by us and CRC-checked, so only a schema change can get here: keep moving.
                log.error("outbox_undecodable destination=%s record=%s reason=%r", name, rid, str(exc)[:200])
                self._spool.ack([rid])
        if self._items:
            log.info("outbox_replay destination=%s pending=%d", name, len(self._items))

    def append(self, alerts: Sequence[Alert]) -> None:
        """Durable before it returns (raises SpoolError, e.g. disk full, with nothing queued)."""
        if not alerts:
            return
        with self._cond:
            ids = self._spool.append([(a.uid.encode(), encode(a)) for a in alerts])
            self._items.extend(zip(ids, alerts, strict=True))
            self._cond.notify_all()

    def snapshot(self) -> list[Item]:
        with self._cond:
            return list(self._items)

    def wait(self, timeout: float) -> bool:
        """Block until something is queued (or timeout); True if there is."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return bool(self._items)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def ack(self, ids: Sequence[RecordId]) -> None:
        done = set(ids)
        with self._cond:
            self._spool.ack(ids)
            self._items = deque(it for it in self._items if it[0] not in done)
            self._cond.notify_all()

    def reject(self, items: Sequence[Item], reason: str) -> None:
        """The destination refused these for good (e.g. 400): keep a copy, then move on."""
        path = self.directory / "rejected.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, b"".join(encode(a) + b"\n" for _, a in items))
            os.fsync(fd)
        finally:
            os.close(fd)
        log.error("outbox_rejected destination=%s alerts=%d kept=%s reason=%r", self.name, len(items), path,
                  reason[:300])
        self.ack([rid for rid, _ in items])

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._spool.close()


class Outbox:
    def __init__(self, directory: Path | str, names: Sequence[str], fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lanes: dict[str, Lane] = {
            name: Lane(name, self.directory / _safe(name), fsync) for name in names
        }

    def append(self, by_destination: Mapping[str, Sequence[Alert]]) -> None:
        for name, alerts in by_destination.items():
            self.lanes[name].append(alerts)

    @property
    def pending(self) -> int:
        return sum(lane.pending for lane in self.lanes.values())

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()


def _safe(name: str) -> str:
    """A destination name as a directory name (names are checked in config; this is the backstop)."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return cleaned or "_"
