"""A local write-ahead spool: events survive a dead broker and a killed agent.

Records are (key, value) pairs appended to segment files ``seg-<n>.log``; each record is
``u32 length | u32 crc32 | u16 key length | key | value`` (big-endian), and each appended batch is
written once and fsync'ed once. Kafka acknowledgements are appended to a sidecar ``seg-<n>.ack``
(u32 record indexes, not fsync'ed: losing it only means resending, never losing). A segment is
deleted once it is sealed and every record in it is acked. On open, a torn tail (the agent died
mid-write) is truncated and logged, and the unacked records are there to replay.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from dwcore.logfmt import kv

log = logging.getLogger(__name__)

RecordId = tuple[int, int]  # (segment number, index in segment); ordered like the log
_HEAD = struct.Struct(">IIH")  # length of (key length + key + value), crc32 of the same, key length
_KLEN = struct.Struct(">H")
_LITTLE_ENDIAN = sys.byteorder == "little"
_U32 = next(t for t in "IL" if array(t).itemsize == 4)  # array typecode of the ack sidecar's u32
_ACK = struct.Struct(">I")
_SEGMENT_RE = re.compile(r"^seg-(\d{12})\.log$")
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class SpoolError(Exception):
    """The spool could not take a batch. ``retriable`` says whether trying again later can work."""

    retriable = False


class SpoolFullError(SpoolError):
    """Retriable: the disk (or quota) is full. Nothing was written; the caller keeps the batch."""

    retriable = True


class _Segment:
    __slots__ = ("ack_fd", "acked", "n_acked", "number", "offsets", "path", "sealed", "size")

    def __init__(self, number: int, path: Path) -> None:
        self.number = number
        self.path = path
        self.offsets = array("Q")  # start of each record
        self.acked = bytearray()
        self.n_acked = 0
        self.size = 0
        self.sealed = False
        self.ack_fd: int | None = None

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(".ack")

    @property
    def done(self) -> bool:
        return self.n_acked == len(self.offsets)


def _frame(key: bytes, value: bytes) -> bytes:
    return b"".join(_frame_parts(key, value))


def _frame_parts(key: bytes, value: bytes) -> tuple[bytes, bytes, bytes]:
    # The crc runs over (key length, key, value) chained, without building that body first.
    klen = len(key)
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(_KLEN.pack(klen))))
    return _HEAD.pack(klen + 2 + len(value), crc, klen), key, value


class Spool:
    """Not thread-safe: one owner (the publisher) serialises calls."""

    def __init__(self, directory: Path | str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 fsync: bool = True, max_bytes: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self.max_bytes = max_bytes  # 0 = only the disk limits the spool
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._active_fd: int | None = None
        self._dirty = False  # the active segment holds writes not fsync'ed yet (append(sync=False))
        self.counters = {"appended": 0, "acked": 0, "torn": 0, "segments_deleted": 0, "full": 0}
        self._load()

    # opening

    def _load(self) -> None:
        numbers = sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT_RE.match(p.name)))
        for number in numbers:
            seg = _Segment(number, self.directory / f"seg-{number:012d}.log")
            self._scan(seg)
            self._load_acks(seg)
            seg.sealed = True  # appends always go to a fresh segment after a restart
            self._segments[number] = seg
            self._maybe_delete(seg)
        self._next_number = (numbers[-1] + 1) if numbers else 1
        if self.pending:
            log.info("spool_opened %s", kv(dir=self.directory, segments=len(self._segments), pending=self.pending))

    def _scan(self, seg: _Segment) -> None:
        data = seg.path.read_bytes()
        pos, end = 0, len(data)
        while pos < end:
            if end - pos < _HEAD.size:
                break
            length, crc, klen = _HEAD.unpack_from(data, pos)
            body_end = pos + 8 + length
            if body_end > end or klen + 2 > length or zlib.crc32(data[pos + 8 : body_end]) != crc:
                break
            seg.offsets.append(pos)
            pos = body_end
        if pos < end:
            # A crash mid-write leaves a partial record; what precedes it is intact (crc-checked).
            self.counters["torn"] += 1
            log.warning("spool_torn_record %s", kv(segment=seg.path.name, offset=pos, dropped_bytes=end - pos,
                                                   records_kept=len(seg.offsets)))
            with open(seg.path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
        seg.size = pos
        seg.acked = bytearray(len(seg.offsets))

    def _load_acks(self, seg: _Segment) -> None:
        try:
            raw = seg.ack_path.read_bytes()
        except FileNotFoundError:
            return
        n = len(seg.offsets)
        for (idx,) in _ACK.iter_unpack(raw[: len(raw) - len(raw) % _ACK.size]):
            if idx < n and not seg.acked[idx]:
                seg.acked[idx] = 1
                seg.n_acked += 1

    # writing

    def append(self, records: Sequence[tuple[bytes, bytes]], *, sync: bool = True) -> list[RecordId]:
        """Durably appends (key, value) records as one write + fsync; returns their ids in order.
        Raises SpoolFullError (nothing written) when the disk is full. ``sync=False``: written but
        not fsync'ed; the caller makes it durable later through ``dup_active`` (or the segment is
        fsync'ed when it is sealed)."""
        if not records:
            return []
        parts: list[bytes] = []
        extend = parts.extend
        for k, v in records:
            extend(_frame_parts(k, v))
        blob = b"".join(parts)
        if self.max_bytes and self.size_bytes + len(blob) > self.max_bytes:
            # The configured cap: refuse like a full disk, so the caller keeps the batch in memory.
            self.counters["full"] += 1
            raise SpoolFullError(f"spool size cap reached in {self.directory}: {self.size_bytes} of "
                                 f"{self.max_bytes} bytes used")
        seg, fd = self._writable()
        start = seg.size
        try:
            written = 0
            while written < len(blob):
                written += os.write(fd, memoryview(blob)[written:])
            if self._fsync and sync:
                os.fsync(fd)
                self._dirty = False
            elif self._fsync:
                self._dirty = True
        except OSError as exc:
            # Roll back to the last whole batch so the segment never holds half of this one.
            try:
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            except OSError:
                log.exception("spool_rollback_failed %s", kv(segment=seg.path.name, offset=start))
            if exc.errno in _NO_SPACE:
                self.counters["full"] += 1
                raise SpoolFullError(f"spool disk full in {self.directory}: {exc.strerror}") from exc
            raise SpoolError(f"spool write failed in {self.directory}: {exc}") from exc
        number, first, offsets = seg.number, len(seg.offsets), seg.offsets
        ids = [(number, first + i) for i in range(len(records))]
        pos = start
        for k, v in records:
            offsets.append(pos)
            pos += _HEAD.size + len(k) + len(v)
        seg.size = pos
        seg.acked.extend(bytes(len(records)))
        self.counters["appended"] += len(records)
        if seg.size >= self._segment_bytes:
            self._seal_active()
        return ids

    @property
    def size_bytes(self) -> int:
        """Bytes held in segment files (acked records leave when their whole segment is acked)."""
        return sum(seg.size for seg in self._segments.values())

    def _writable(self) -> tuple[_Segment, int]:
        if self._active is None or self._active_fd is None:
            number = self._next_number
            self._next_number += 1
            seg = _Segment(number, self.directory / f"seg-{number:012d}.log")
            self._active_fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._segments[number] = seg
            self._active = seg
            # The new file's directory entry must survive a crash too.
            self._fsync_dir()
        return self._active, self._active_fd

    def dup_active(self) -> int | None:
        """A duplicate of the active segment's descriptor (the caller fsyncs and closes it, outside
        its own lock), or None when there is none: earlier segments were fsync'ed when sealed."""
        return os.dup(self._active_fd) if self._active_fd is not None and self._dirty else None

    def _seal_active(self) -> None:
        if self._active is None:
            return
        seg, self._active = self._active, None
        if self._active_fd is not None:
            if self._dirty:  # appended with sync=False: durable before its descriptor goes
                os.fsync(self._active_fd)
                self._dirty = False
            os.close(self._active_fd)
            self._active_fd = None
        seg.sealed = True
        self._maybe_delete(seg)

    def _fsync_dir(self) -> None:
        if not self._fsync:
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # acknowledging

    def ack(self, ids: Iterable[RecordId]) -> None:
        by_seg: dict[int, list[int]] = {}
        for number, idx in ids:
            by_seg.setdefault(number, []).append(idx)
        for number, idxs in by_seg.items():
            seg = self._segments.get(number)
            if seg is None:
                continue
            acked, n = seg.acked, len(seg.acked)
            fresh = array(_U32, [i for i in idxs if i < n and not acked[i]])
            if not fresh:
                continue
            for i in fresh:
                acked[i] = 1
            seg.n_acked += len(fresh)
            self.counters["acked"] += len(fresh)
            if seg.ack_fd is None:
                seg.ack_fd = os.open(seg.ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if _LITTLE_ENDIAN:
                fresh.byteswap()  # the sidecar holds big-endian u32s, like the records' framing
            os.write(seg.ack_fd, fresh.tobytes())
            self._maybe_delete(seg)

    def _maybe_delete(self, seg: _Segment) -> None:
        if not (seg.sealed and seg.done):
            return
        if seg.ack_fd is not None:
            os.close(seg.ack_fd)
            seg.ack_fd = None
        seg.path.unlink(missing_ok=True)
        seg.ack_path.unlink(missing_ok=True)
        del self._segments[seg.number]
        self.counters["segments_deleted"] += 1

    # reading

    @property
    def pending(self) -> int:
        return sum(len(s.offsets) - s.n_acked for s in self._segments.values())

    @property
    def last_id(self) -> RecordId | None:
        for number in sorted(self._segments, reverse=True):
            seg = self._segments[number]
            if seg.offsets:
                return (number, len(seg.offsets) - 1)
        return None

    def is_acked(self, rid: RecordId) -> bool:
        seg = self._segments.get(rid[0])
        return seg is None or bool(seg.acked[rid[1]])

    def iter_unacked(self, start: RecordId | None = None) -> Iterator[tuple[RecordId, bytes, bytes]]:
        """Unacked records with id >= ``start`` (all when None), in log order, read from disk.
        Records appended while iterating may or may not be included."""
        for number in sorted(self._segments):
            if start is not None and number < start[0]:
                continue
            seg = self._segments.get(number)
            if seg is None:
                continue
            first = start[1] if start is not None and number == start[0] else 0
            count = len(seg.offsets)
            if first >= count or seg.done:
                continue
            with open(seg.path, "rb") as f:
                f.seek(seg.offsets[first])
                data = f.read(seg.size - seg.offsets[first])
            base = seg.offsets[first]
            for idx in range(first, count):
                if seg.acked[idx]:
                    continue
                pos = seg.offsets[idx] - base
                length, _crc, klen = _HEAD.unpack_from(data, pos)
                key = data[pos + 10 : pos + 10 + klen]
                value = data[pos + 10 + klen : pos + 8 + length]
                yield (number, idx), key, value

    def close(self) -> None:
        """Seals the active segment (deleting it when fully acked) and closes files."""
        self._seal_active()
        for seg in list(self._segments.values()):
            if seg.ack_fd is not None:
                os.close(seg.ack_fd)
                seg.ack_fd = None
