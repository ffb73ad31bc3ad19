"""What a user's state remembers about recent files, in fixed-size structures.

- ``RecentSet``: "was this path seen within the last N minutes?" as two generations of a Bloom
  filter (the older one is dropped when the newer one is ``span_ms`` old or full). Fixed size
  whatever the user does; a false positive means a long-lived file is taken for churn, which only
  ever lowers a score, and stays under ~1% at the design load.
- ``Lru``: small maps of recently seen keys (extensions, directories) with a last-seen time,
  trimmed to a cap by forgetting the least recently seen.
Keys are hashed with blake2b; the state never holds a list of every file.
"""
from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import msgspec

BLOOM_HASHES = 5
_UNPACK = struct.Struct(f"<{BLOOM_HASHES}I").unpack  # the digest as little-endian 32-bit words


@lru_cache(maxsize=1024)
def _hashes(key: str) -> tuple[int, ...]:
    # Cached: one event asks several filters about the same path (created? converted? then add).
    return _UNPACK(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=4 * BLOOM_HASHES).digest())


def _positions(key: str, nbits: int) -> list[int]:
    return [h % nbits for h in _hashes(key)]


class RecentSet(msgspec.Struct, array_like=True):
    nbytes: int = 1024
    capacity: int = 800  # entries per generation before it rotates early (keeps FP ~1%)
    new_start: int = 0  # event time the newer generation started
    new_count: int = 0
    new: bytearray = bytearray()
    old: bytearray = bytearray()

    def _rotate_if_due(self, t: int, span_ms: int) -> None:
        if not self.new:
            self.new = bytearray(self.nbytes)
            self.new_start = t
            return
        if t - self.new_start >= span_ms or self.new_count >= self.capacity:
            # Anything older than two spans is forgotten: drop the old generation.
            self.old = self.new if t - self.new_start < 2 * span_ms else bytearray()
            self.new = bytearray(self.nbytes)
            self.new_start, self.new_count = t, 0

    def add(self, key: str, t: int, span_ms: int) -> None:
        self._rotate_if_due(t, span_ms)
        nbits = self.nbytes * 8
        for pos in _positions(key, nbits):
            self.new[pos >> 3] |= 1 << (pos & 7)
        self.new_count += 1

    def __contains__(self, key: str) -> bool:
        if not self.new:
            return False
        nbits = self.nbytes * 8
        pos = _positions(key, nbits)
        for gen in (self.new, self.old):
            if gen:
                for p in pos:
                    if not gen[p >> 3] & (1 << (p & 7)):
                        break
                else:
                    return True
        return False

    def expire(self, t: int, span_ms: int) -> None:
        """Forget generations that are entirely older than two spans (the user went quiet)."""
        if self.new and t - self.new_start >= 2 * span_ms:
            self.new, self.old, self.new_count = bytearray(), bytearray(), 0


class Lru(msgspec.Struct, array_like=True):
    seen: dict[str, int] = {}  # key -> last seen (event ms)

    def touch(self, key: str, t: int, cap: int) -> int | None:
        """Record ``key`` at ``t``; return when it was last seen before (None = never/forgotten)."""
        seen = self.seen
        prev = seen.get(key)
        last = prev or 0
        seen[key] = t if t > last else last
        if len(seen) > cap + cap // 4:
            # Trim in steps, not per event: sorting on every insert at the cap would cost O(n log n).
            for k in sorted(self.seen, key=self.seen.__getitem__)[: len(self.seen) - cap]:
                del self.seen[k]
        return prev


@lru_cache(maxsize=1024)
def short_hash(text: str) -> str:
    """A compact stable key for an LRU (directories can be long)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
