"""What was written: entropy, printable ratio and type of small bounded samples of a file.

Pure signal functions (``entropy``, ``partial_encryption``; the type from magic bytes is
``agents.magic``) plus ``ContentSampler``, which reads at most three small regions of a
file (head, middle, tail), keeps the previous sample of each path in a bounded cache and spends
at most ``bytes_per_s`` on reads, so a write storm can never stall capture: a write it cannot
afford is marked ``sample_skipped="budget"``, never dropped.

Partial encryption is found by comparing the new bytes with the previous sample at the same
offsets, byte by byte: "header" when a leading run of the head turned random while everything
else compared is unchanged, "intermittent" when several separate runs of random bytes appear
among unchanged data (LockFile encrypts every other 16 bytes; 3-5% of a file in small blocks
is enough to ruin it). "Random" for a handful of bytes is judged by the count of distinct byte
values against what uniform random bytes of that length would show, which works for 64 bytes
where an entropy estimate cannot.
"""
from __future__ import annotations

import math
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec
import numpy as np

from dwcore.agents.magic import TEXT_RATIO, ext_mismatch, is_utf8, signature_type, text_bytes

HEAD_BYTES = 4096
MIDDLE_BYTES = 4096
TAIL_BYTES = 4096
BLOCK = 16  # granularity of the change map (LockFile's unit)
DEFAULT_BYTES_PER_S = 32 * 1024 * 1024
DEFAULT_CACHE_BYTES = 16 * 1024 * 1024
DEFAULT_CACHE_ENTRIES = 100_000

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class ContentSignals(msgspec.Struct, frozen=True, omit_defaults=True):
    """The AccessEvent fields of the 'what was written' group, all None when not known."""

    entropy: float | None = None
    printable_ratio: float | None = None
    magic_type: str | None = None
    ext_mismatch: bool | None = None
    prev_entropy: float | None = None
    prev_magic_type: str | None = None
    partial_encryption: str | None = None
    sample_skipped: str | None = None

    def fields(self) -> dict[str, object]:
        """Only the fields that are set, for ``msgspec.structs.replace`` or ``make_event``."""
        return {k: v for k, v in zip(self.__struct_fields__, msgspec.structs.astuple(self), strict=True)
                if v is not None}


Fields = dict[str, object]
_SKIPPED: dict[str, Fields] = {r: {"sample_skipped": r} for r in ("gone", "unreadable", "not_regular", "budget")}
_EMPTY_FIELDS: Fields = {"entropy": 0.0, "magic_type": "empty"}
_EMPTY_AGAIN_FIELDS: Fields = {**_EMPTY_FIELDS, "prev_entropy": 0.0, "prev_magic_type": "empty"}


# signals (pure)

def _counts(data: bytes) -> np.ndarray:
    return np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)


def entropy_of_counts(counts: np.ndarray) -> float:
    n = int(counts.sum())
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    return float(min(8.0, max(0.0, -(p * np.log2(p)).sum())))


def entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte (0 for empty input)."""
    return entropy_of_counts(_counts(data))


class _XLogX:
    """``c * log2(c)`` for every count a sample of up to ``n`` bytes can hold, so that a sample's
    entropy is ``log2(n) - sum(table[counts]) / n``: two numpy calls instead of a dozen."""

    def __init__(self, n: int) -> None:
        c = np.arange(n + 1, dtype=np.float64)
        c[0] = 1.0  # 0 * log2(0) counts as 0
        self.table = np.arange(n + 1, dtype=np.float64) * np.log2(c)

    def entropy(self, counts: np.ndarray, n: int) -> float:
        if n == 0:
            return 0.0
        h = math.log2(n) - float(self.table[counts].sum()) / n
        return min(8.0, max(0.0, h))


def _random_distinct(n: int) -> float:
    """Expected count of distinct values among n uniformly random bytes."""
    return 256.0 * (1.0 - math.exp(n * math.log1p(-1.0 / 256.0)))


def looks_random(data: bytes | np.ndarray, level: float = 0.8) -> bool:
    """Whether bytes look like ciphertext: nearly as many distinct values as uniform random bytes
    of that length would have (text rarely reaches 100 distinct; 64 random bytes show ~57)."""
    arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    n = len(arr)
    if n < 48:
        return False
    distinct = int(np.count_nonzero(np.bincount(arr, minlength=256)))
    return distinct >= level * _random_distinct(n)


Regions = tuple[tuple[int, bytes], ...]  # (offset, bytes) of each sampled region


def _runs(mask: np.ndarray) -> int:
    """Number of separate runs of True in a 1-d bool array."""
    if not len(mask):
        return 0
    return int(mask[0]) + int(np.count_nonzero(mask[1:] & ~mask[:-1]))


def partial_encryption(prev: Regions, new: Regions) -> str | None:
    """'header', 'intermittent' or None, comparing regions sampled at the same offsets."""
    new_at = dict(new)
    changed_new: list[np.ndarray] = []
    changed_old: list[np.ndarray] = []
    head_prefix_only = True
    head_changed = False
    runs = 0
    blocks_total = blocks_changed = 0
    for offset, old_bytes in prev:
        cur = new_at.get(offset)
        if cur is None:
            continue
        n = min(len(old_bytes), len(cur))
        if n == 0:
            continue
        a = np.frombuffer(old_bytes, dtype=np.uint8, count=n)
        b = np.frombuffer(cur, dtype=np.uint8, count=n)
        diff = a != b
        if not diff.any():
            blocks_total += -(-n // BLOCK)
            continue
        pad = (-n) % BLOCK
        blocks = np.concatenate([diff, np.zeros(pad, dtype=bool)]).reshape(-1, BLOCK).any(axis=1)
        blocks_total += len(blocks)
        blocks_changed += int(blocks.sum())
        region_runs = _runs(blocks)
        runs += region_runs
        changed_new.append(b[diff])
        changed_old.append(a[diff])
        if offset == 0:
            head_changed = True
            head_prefix_only = bool(blocks[0]) and region_runs == 1
        else:
            head_prefix_only = False
    if not changed_new or blocks_changed == 0:
        return None
    new_bytes = np.concatenate(changed_new)
    old_bytes_all = np.concatenate(changed_old)
    # Not turned random (an edit), or it was near-random already (compressed data rewritten):
    # the old bytes must be clearly structured, well below the bar for "random".
    if not looks_random(new_bytes) or looks_random(old_bytes_all, 0.6):
        return None
    if head_changed and head_prefix_only and blocks_changed < blocks_total:
        return "header"
    if runs >= 2 and blocks_changed < 0.9 * blocks_total:
        return "intermittent"
    return None


# sampling (reads files, keeps a bounded cache, spends a byte budget)

class ByteBudget:
    """A token bucket of bytes per second; ``take`` never blocks."""

    def __init__(self, bytes_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = bytes_per_s
        self._clock = clock
        self._tokens = float(bytes_per_s)
        self._at = clock()

    def take(self, n: int) -> bool:
        if self.rate <= 0:
            return True  # 0 = unlimited
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


class _Prev(msgspec.Struct, frozen=True):
    size: int
    entropy: float
    magic: str
    regions: Regions
    nbytes: int  # what the entry holds, for the cache's byte bound


_EMPTY_PREV = _Prev(0, 0.0, "empty", (), 64)


def _empty_fields(prev: _Prev | None) -> Fields:
    if prev is None:
        return _EMPTY_FIELDS
    if prev is _EMPTY_PREV:
        return _EMPTY_AGAIN_FIELDS
    return {**_EMPTY_FIELDS, "prev_entropy": prev.entropy, "prev_magic_type": prev.magic}


def _prev(size: int, ent: float, magic: str, regions: Regions) -> _Prev:
    return _Prev(size, ent, magic, regions, sum(len(b) for _, b in regions) + 64)


def plan_regions(size: int, head: int = HEAD_BYTES, middle: int = MIDDLE_BYTES, tail: int = TAIL_BYTES,
                 prev: Regions = ()) -> list[tuple[int, int]]:
    """(offset, length) to read: the whole file when small, else head, middle and tail; the
    previous sample's offsets are reused when they still fit, so an overwrite compares like with like."""
    if size <= head + middle + tail:
        return [(0, size)] if size else []
    old = {off: len(b) for off, b in prev}
    mid_off = next((o for o in old if o not in (0,) and head <= o and o + middle <= size - tail), None)
    if mid_off is None:
        mid_off = (size // 2) // BLOCK * BLOCK
    tail_off = size - tail
    return [(0, head), (mid_off, middle), (tail_off, tail)]


class ContentSampler:
    """Samples files for content signals. Thread-safe (one lock around the cache and budget)."""

    def __init__(self, *, head: int = HEAD_BYTES, middle: int = MIDDLE_BYTES, tail: int = TAIL_BYTES,
                 bytes_per_s: int = DEFAULT_BYTES_PER_S, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 cache_entries: int = DEFAULT_CACHE_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self._sizes = (head, middle, tail)
        self._budget = ByteBudget(bytes_per_s, clock)
        self._cache: OrderedDict[str | bytes, _Prev] = OrderedDict()
        self._cache_bytes = 0
        self._max_bytes = cache_bytes
        self._max_entries = cache_entries
        self._lock = threading.Lock()
        self._xlogx = _XLogX(head + middle + tail)
        self.counters = {"sampled": 0, "skipped_budget": 0, "skipped_other": 0, "bytes_read": 0}

    def _skip(self, reason: str) -> Fields:
        self.counters["skipped_budget" if reason == "budget" else "skipped_other"] += 1
        return _SKIPPED[reason]

    def sample(self, path: str | bytes, *, name: str | None = None, empty_hint: bool = False) -> ContentSignals:
        """Signals of the file at ``path`` now (see ``sample_fields``)."""
        return ContentSignals(**self.sample_fields(path, name=name, empty_hint=empty_hint))  # type: ignore[arg-type]

    def sample_fields(self, path: str | bytes, *, name: str | None = None, empty_hint: bool = False) -> Fields:
        """The set ContentSignals fields of the file at ``path`` now, as keywords for
        ``msgspec.structs.replace`` (a shared dict: never change it). ``name`` (default: the path)
        decides the extension. Never follows a symlink and never blocks on a FIFO. ``empty_hint``:
        the caller saw the file empty a moment ago, so one stat may settle it without opening it
        (a ``touch`` storm)."""
        if empty_hint:
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                return self._skip("gone")
            except OSError:
                return self._skip("unreadable")
            if st.st_size == 0 and stat.S_ISREG(st.st_mode):
                self.counters["sampled"] += 1
                with self._lock:
                    prev = self._cache.get(path)
                    self._remember(path, _EMPTY_PREV)
                return _empty_fields(prev)
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                return self._skip("not_regular")
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return self._skip("gone")
        except OSError:
            return self._skip("unreadable")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._skip("not_regular")
            size = st.st_size
            with self._lock:
                prev = self._cache.get(path)
                if size:
                    plan = plan_regions(size, *self._sizes, prev=prev.regions if prev else ())
                    if not self._budget.take(sum(n for _, n in plan)):
                        return self._skip("budget")
                else:
                    plan = []
            regions = tuple((off, os.pread(fd, n, off)) for off, n in plan)
        except OSError:
            return self._skip("unreadable")
        finally:
            os.close(fd)
        return self._signals(path, name, size, regions, prev)

    def _signals(self, path: str | bytes, name: str | None, size: int, regions: Regions,
                 prev: _Prev | None) -> Fields:
        self.counters["sampled"] += 1
        if not regions:  # an empty file: nothing to read, nothing to count
            with self._lock:
                self._remember(path, _EMPTY_PREV)
            return _empty_fields(prev)
        data = regions[0][1] if len(regions) == 1 else b"".join(b for _, b in regions)
        n = len(data)
        self.counters["bytes_read"] += n
        counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
        ent = round(self._xlogx.entropy(counts, n), 4) if n <= len(self._xlogx.table) - 1 else round(
            entropy_of_counts(counts), 4)
        utf8 = not data.isascii() and all(is_utf8(b) for _, b in regions)
        good = text_bytes(data, utf8)
        head = regions[0][1]
        tail = regions[-1][1]
        kind = signature_type(head, tail) if head else None
        if kind is None:
            if not head:
                kind = "unknown"  # a file that shrank under us: size said data, the read found none
            else:
                head_good = good if len(regions) == 1 else text_bytes(head)
                kind = "text" if b"\x00" not in head and head_good >= TEXT_RATIO * len(head) else "unknown"
        partial = partial_encryption(prev.regions, regions) if prev is not None else None
        with self._lock:
            self._remember(path, _prev(size, ent, kind, regions))
        out: Fields = {"entropy": ent, "magic_type": kind}
        if n:
            out["printable_ratio"] = round(good / n, 4)
        mismatch = ext_mismatch(name or os.fsdecode(path), kind)
        if mismatch is not None:
            out["ext_mismatch"] = mismatch
        if prev is not None:
            out["prev_entropy"] = prev.entropy
            out["prev_magic_type"] = prev.magic
        if partial is not None:
            out["partial_encryption"] = partial
        return out

    # cache bookkeeping (under self._lock)

    def _remember(self, path: str | bytes, entry: _Prev) -> None:
        old = self._cache.pop(path, None)
        if old is not None:
            self._cache_bytes -= old.nbytes
        self._cache[path] = entry
        self._cache_bytes += entry.nbytes
        while self._cache and (self._cache_bytes > self._max_bytes or len(self._cache) > self._max_entries):
            _, dropped = self._cache.popitem(last=False)
            self._cache_bytes -= dropped.nbytes

    def knows(self, path: str | bytes) -> bool:
        return path in self._cache

    def forget(self, path: str | bytes) -> None:
        with self._lock:
            old = self._cache.pop(path, None)
            if old is not None:
                self._cache_bytes -= old.nbytes

    def moved(self, old: str | bytes, new: str | bytes) -> None:
        with self._lock:
            entry = self._cache.pop(old, None)
            if entry is not None:
                self._cache_bytes -= entry.nbytes
                self._remember(new, entry)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def cache_bytes(self) -> int:
        return self._cache_bytes
