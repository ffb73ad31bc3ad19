"""What was written: entropy, printable ratio and type of small bounded samples of a file.

Pure signal functions (``entropy``, ``printable_ratio``, ``magic_type``, ``ext_mismatch``,
``partial_encryption``) plus ``ContentSampler``, which reads at most three small regions of a
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

HEAD_BYTES = 4096
MIDDLE_BYTES = 4096
TAIL_BYTES = 4096
BLOCK = 16  # granularity of the change map (LockFile's unit)
DEFAULT_BYTES_PER_S = 32 * 1024 * 1024
DEFAULT_CACHE_BYTES = 16 * 1024 * 1024
DEFAULT_CACHE_ENTRIES = 100_000

_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[32:127] = True
_PRINTABLE[[9, 10, 13]] = True
_PRINTABLE_IDX = np.flatnonzero(_PRINTABLE)
_HIGH_IDX = np.arange(128, 256)


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
        return {k: v for k in self.__struct_fields__ if (v := getattr(self, k)) is not None}


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


def _is_utf8(data: bytes) -> bool:
    # A sample may cut a multi-byte character at either end: allow up to 3 bytes of slack.
    for cut in range(4):
        try:
            data[cut : len(data) - (3 - cut) if cut < 3 else len(data)].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def printable_ratio_of_counts(counts: np.ndarray, utf8: bool) -> float:
    n = int(counts.sum())
    if n == 0:
        return 1.0
    good = int(counts[_PRINTABLE_IDX].sum())
    if utf8:
        good += int(counts[_HIGH_IDX].sum())
    return good / n


def printable_ratio(data: bytes) -> float:
    """Share of bytes that belong to text: ASCII printable and whitespace, plus the bytes of
    multi-byte characters when the sample is valid UTF-8."""
    counts = _counts(data)
    utf8 = bool(counts[_HIGH_IDX].any()) and _is_utf8(data)
    return printable_ratio_of_counts(counts, utf8)


_ZIP_KINDS = ((b"word/", "docx"), (b"xl/", "xlsx"), (b"ppt/", "pptx"))


def _zip_kind(head: bytes) -> str:
    # The first local file header's name (offset 30, length at 26) tells OOXML, ODF and NPZ apart;
    # OOXML writers put [Content_Types].xml or the part folders first.
    if len(head) >= 30:
        name_len = int.from_bytes(head[26:28], "little")
        name = head[30 : 30 + name_len]
        if name == b"mimetype" and b"opendocument" in head[:200]:
            return "odf"
        if name.endswith(b".npy"):
            return "npz"
    window = head[:4096]
    for marker, kind in _ZIP_KINDS:
        if b"PK\x03\x04" in window and marker in window:
            return kind
    if b"[Content_Types].xml" in window:
        return "ooxml"
    return "zip"


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"\x1f\x8b", "gzip"),
    (b"PAR1", "parquet"),
    (b"\x93NUMPY", "npy"),
    (b"\x7fELF", "elf"),
    (b"SQLite format 3\x00", "sqlite"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole2"),
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"ARROW1", "arrow"),
    (b"Obj\x01", "avro"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"-----BEGIN PGP", "pgp"),
    (b"age-encryption.org/", "age"),
    (b"MZ", "pe"),
)


def magic_type(head: bytes, tail: bytes = b"", size: int | None = None) -> str:
    """The file type from its first bytes ("pdf", "zip", "docx", "png", "text", ...),
    "empty" for an empty file and "unknown" when nothing matches."""
    if not head:
        return "empty" if not size else "unknown"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return _zip_kind(head)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 2 and head[0] == 0x78 and head[1] in (0x01, 0x5E, 0x9C, 0xDA):
        return "zlib"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and tail.endswith(b"."):
        return "pickle"
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if b"\x00" not in head and printable_ratio(head) >= 0.95:
        return "text"
    return "unknown"


_TEXT = frozenset({"text"})
_ZIPS = frozenset({"zip", "docx", "xlsx", "pptx", "ooxml", "odf", "npz"})
EXPECTED: dict[str, frozenset[str]] = {
    ".pdf": frozenset({"pdf"}),
    ".docx": frozenset({"docx", "ooxml", "zip"}), ".docm": frozenset({"docx", "ooxml", "zip"}),
    ".xlsx": frozenset({"xlsx", "ooxml", "zip"}), ".xlsm": frozenset({"xlsx", "ooxml", "zip"}),
    ".pptx": frozenset({"pptx", "ooxml", "zip"}),
    ".odt": frozenset({"odf", "zip"}), ".ods": frozenset({"odf", "zip"}), ".odp": frozenset({"odf", "zip"}),
    ".zip": _ZIPS, ".jar": _ZIPS, ".whl": _ZIPS,
    ".npz": frozenset({"npz", "zip"}), ".npy": frozenset({"npy"}),
    ".pt": frozenset({"zip", "pickle"}), ".pth": frozenset({"zip", "pickle"}),
    ".pkl": frozenset({"pickle"}), ".pickle": frozenset({"pickle"}),
    ".png": frozenset({"png"}), ".jpg": frozenset({"jpeg"}), ".jpeg": frozenset({"jpeg"}),
    ".gif": frozenset({"gif"}), ".tif": frozenset({"tiff"}), ".tiff": frozenset({"tiff"}),
    ".webp": frozenset({"webp"}), ".mp4": frozenset({"mp4"}), ".mov": frozenset({"mp4"}),
    ".gz": frozenset({"gzip"}), ".tgz": frozenset({"gzip"}), ".bz2": frozenset({"bzip2"}),
    ".xz": frozenset({"xz"}), ".zst": frozenset({"zstd"}), ".7z": frozenset({"7z"}), ".rar": frozenset({"rar"}),
    ".parquet": frozenset({"parquet"}), ".arrow": frozenset({"arrow"}), ".feather": frozenset({"arrow"}),
    ".avro": frozenset({"avro"}), ".h5": frozenset({"hdf5"}), ".hdf5": frozenset({"hdf5"}),
    ".safetensors": frozenset({"safetensors"}),
    ".sqlite": frozenset({"sqlite"}), ".sqlite3": frozenset({"sqlite"}), ".db": frozenset({"sqlite"}),
    ".doc": frozenset({"ole2"}), ".xls": frozenset({"ole2"}), ".ppt": frozenset({"ole2"}),
    ".so": frozenset({"elf"}), ".exe": frozenset({"pe"}), ".dll": frozenset({"pe"}),
    **{ext: _TEXT for ext in (".txt", ".csv", ".tsv", ".json", ".jsonl", ".md", ".py", ".yaml", ".yml",
                              ".xml", ".html", ".htm", ".log", ".ini", ".cfg", ".conf", ".sh", ".sql",
                              ".rst", ".toml", ".js", ".ts", ".c", ".h", ".java", ".go", ".rs", ".r",
                              ".ipynb", ".tex", ".svg")},
}


def ext_mismatch(name: str, kind: str) -> bool | None:
    """True when the type from magic bytes disagrees with the extension; None when the extension
    is not one we know or the file is empty."""
    if kind == "empty":
        return None
    expected = EXPECTED.get(os.path.splitext(name)[1].lower())
    if expected is None:
        return None
    return kind not in expected


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

    @property
    def nbytes(self) -> int:
        return sum(len(b) for _, b in self.regions) + 64


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
        self.counters = {"sampled": 0, "skipped_budget": 0, "skipped_other": 0, "bytes_read": 0}

    def _skip(self, reason: str) -> ContentSignals:
        self.counters["skipped_budget" if reason == "budget" else "skipped_other"] += 1
        return ContentSignals(sample_skipped=reason)

    def sample(self, path: str | bytes, *, name: str | None = None) -> ContentSignals:
        """Signals of the file at ``path`` now. ``name`` (default: the path) decides the extension.
        Never follows a symlink and never blocks on a FIFO."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return self._skip("gone")
        except OSError:
            return self._skip("unreadable")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._skip("not_regular")
            with self._lock:
                prev = self._cache.get(path)
            plan = plan_regions(st.st_size, *self._sizes, prev=prev.regions if prev else ())
            want = sum(n for _, n in plan)
            with self._lock:
                if not self._budget.take(want):
                    return self._skip("budget")
            regions = tuple((off, os.pread(fd, n, off)) for off, n in plan)
        except OSError:
            return self._skip("unreadable")
        finally:
            os.close(fd)
        return self._signals(path, name or os.fsdecode(path), st.st_size, regions, prev)

    def _signals(self, path: str | bytes, name: str, size: int, regions: Regions, prev: _Prev | None) -> ContentSignals:
        data = b"".join(b for _, b in regions)
        self.counters["sampled"] += 1
        self.counters["bytes_read"] += len(data)
        counts = _counts(data)
        utf8 = bool(counts[_HIGH_IDX].any()) and all(_is_utf8(b) for _, b in regions)
        ent = round(entropy_of_counts(counts), 4)
        head = regions[0][1] if regions else b""
        tail = regions[-1][1] if regions else b""
        kind = magic_type(head, tail, size)
        partial = partial_encryption(prev.regions, regions) if prev is not None else None
        with self._lock:
            self._remember(path, _Prev(size, ent, kind, regions))
        return ContentSignals(
            entropy=ent,
            printable_ratio=round(printable_ratio_of_counts(counts, utf8), 4) if data else None,
            magic_type=kind,
            ext_mismatch=ext_mismatch(name, kind),
            prev_entropy=prev.entropy if prev is not None else None,
            prev_magic_type=prev.magic if prev is not None else None,
            partial_encryption=partial,
        )

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
