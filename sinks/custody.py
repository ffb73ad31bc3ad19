"""Tamper evidence for the forensic history: seal stored events in chained blocks, verify the chain.

The writer that stored a stream's events seals them: every ``interval_s`` it hashes, in the engine,
the rows of each stream it owns from the end of the last block up to the newest position it has
stored and committed, and appends a ``custody_blocks`` row chained to the previous block. Only
the writer that owns a stream (a Kafka partition, or the embedded process) seals it, so a stream
has one chain. ``verify`` recomputes every block from the rows and names, per stream, the first
block whose rows were altered, added or removed, the first missing block, or the first broken
link; anything stored after the last block is reported as not yet sealed.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from dwcore.logfmt import kv
from dwcore.schemas.custody import CustodyBlock, block_hash
from dwcore.schemas.ddl import CUSTODY_COLUMNS, CUSTODY_TABLE, EVENT_COLUMNS, EVENTS_TABLE, SOURCE_COLUMNS
from dwcore.sinks.store_writer import StoreWriter

log = logging.getLogger(__name__)

Rows = Callable[[str, Mapping[str, Any]], list[list[Any]]]

SEALED_COLUMNS = [name for name, _ in EVENT_COLUMNS + SOURCE_COLUMNS]


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a column name: {name!r}")
    return f"`{name}`"


def rows_hash_sql(columns: list[str], prefix: str = "") -> str:
    """SHA-256 over the rows' own SHA-256, in offset order, as hex: the same in sealing and verify."""
    cols = ", ".join(prefix + _ident(c) for c in columns)
    return (f"hex(SHA256(arrayStringConcat(arrayMap(x -> x.2, arraySort(x -> x.1, "
            f"groupArray(({prefix}`_offset`, hex(SHA256(toString(tuple({cols})))))))))))")


class Sealer:
    """Seals what this writer stored. ``stored(src, offset)`` after each commit; ``tick()`` often."""

    def __init__(self, writer: StoreWriter, interval_s: float = 5.0, now: Callable[[], float] = time.monotonic):
        self.writer = writer
        self.interval_s = interval_s
        self._now = now
        self._upto: dict[str, int] = {}  # stream -> highest offset stored and committed
        self._heads: dict[str, tuple[int, int, str]] = {}  # stream -> (seq, last_offset, block_hash)
        self._last = now()
        self.blocks = 0

    def stored(self, src: str, offset: int) -> None:
        if offset > self._upto.get(src, -1):
            self._upto[src] = offset

    def forget(self, src: str) -> None:
        """This writer no longer owns ``src`` (partition revoked): its next owner seals it."""
        self._upto.pop(src, None)
        self._heads.pop(src, None)

    def tick(self, force: bool = False) -> int:
        if not force and self._now() - self._last < self.interval_s:
            return 0
        self._last = self._now()
        return sum(self.seal(src) for src in list(self._upto))

    def _head(self, src: str) -> tuple[int, int, str]:
        if src not in self._heads:
            found = self.writer.rows(
                f"SELECT seq, last_offset, block_hash FROM {CUSTODY_TABLE} WHERE stream = {{s:String}} "  # noqa: S608
                "ORDER BY seq DESC LIMIT 1", {"s": src})
            self._heads[src] = (int(found[0][0]), int(found[0][1]), found[0][2]) if found else (0, -1, "")
        return self._heads[src]

    def seal(self, src: str) -> int:
        """Seal ``src`` from its last block to the newest stored offset. Returns blocks written (0/1)."""
        upto = self._upto.get(src)
        if upto is None:
            return 0
        seq, last, prev = self._head(src)
        if upto <= last:
            return 0
        first = last + 1
        found = self.writer.rows(
            f"SELECT count(), toUnixTimestamp64Milli(min(time)), toUnixTimestamp64Milli(max(time)), "  # noqa: S608
            f"{rows_hash_sql(SEALED_COLUMNS)} FROM {EVENTS_TABLE} "
            "WHERE _src = {s:String} AND _offset BETWEEN {a:UInt64} AND {b:UInt64}",
            {"s": src, "a": first, "b": upto})
        rows, min_t, max_t, rhash = int(found[0][0]), int(found[0][1]), int(found[0][2]), found[0][3]
        if rows == 0:
            return 0  # only dead letters or alerts in that range: nothing to seal yet
        seq += 1
        bhash = block_hash(src, seq, first, upto, rows, rhash, prev)
        block = CustodyBlock(stream=src, seq=seq, first_offset=first, last_offset=upto, rows=rows, min_time=min_t,
                             max_time=max_t, columns=SEALED_COLUMNS, rows_hash=rhash, prev_hash=prev,
                             block_hash=bhash, sealed_at=time.time_ns() // 1_000_000)
        self.writer.insert(CUSTODY_TABLE, CUSTODY_COLUMNS, [block], dedup_token=f"custody:{src}:{seq}")
        self._heads[src] = (seq, upto, bhash)
        self.blocks += 1
        log.debug("custody_sealed %s", kv(stream=src, seq=seq, first=first, last=upto, rows=rows))
        return 1


class Finding(msgspec.Struct):
    stream: str
    seq: int
    problem: str  # rows altered, block missing, chain broken, block altered, duplicate block
    detail: str


class StreamResult(msgspec.Struct):
    stream: str
    blocks: int
    verified: int
    rows: int
    unsealed_rows: int
    first_problem: Finding | None = None


def verify(rows: Rows) -> list[StreamResult]:
    """Recompute every chain; per stream the first problem found, in chain order."""
    blocks = rows(
        f"SELECT stream, seq, first_offset, last_offset, rows, columns, rows_hash, prev_hash, block_hash "  # noqa: S608
        f"FROM {CUSTODY_TABLE} ORDER BY stream, seq", {})
    by_stream: dict[str, list[list[Any]]] = {}
    for b in blocks:
        by_stream.setdefault(b[0], []).append(b)
    return [_verify_stream(rows, stream, chain) for stream, chain in sorted(by_stream.items())]


def _recompute(rows: Rows, stream: str, columns: list[str]) -> dict[int, tuple[int, str]]:
    """seq -> (rows, rows_hash) recomputed from the events, one pass (ASOF JOIN rows to blocks)."""
    found = rows(
        f"""SELECT b.seq, count(), {rows_hash_sql(columns, "e.")}
FROM (SELECT * FROM {EVENTS_TABLE} WHERE _src = {{s:String}}) AS e
ASOF JOIN (SELECT stream, seq, first_offset, last_offset FROM {CUSTODY_TABLE} WHERE stream = {{s:String}}) AS b
    ON e._src = b.stream AND e._offset >= b.first_offset
WHERE e._offset <= b.last_offset
GROUP BY b.seq""",  # noqa: S608 - identifiers only
        {"s": stream})
    return {int(seq): (int(n), h) for seq, n, h in found}


def _verify_stream(rows: Rows, stream: str, chain: list[list[Any]]) -> StreamResult:
    columns = list(chain[0][5])
    recomputed = _recompute(rows, stream, columns)
    last = int(chain[-1][3])
    unsealed = int(rows(f"SELECT count() FROM {EVENTS_TABLE} WHERE _src = {{s:String}} AND _offset > {{o:UInt64}}",  # noqa: S608
                        {"s": stream, "o": last})[0][0])
    result = StreamResult(stream, len(chain), 0, sum(n for n, _ in recomputed.values()), unsealed)
    prev_hash, expected_seq = "", 1
    for _, seq, first, last_off, nrows, cols, rhash, prev, bhash in chain:
        seq, first, last_off, nrows = int(seq), int(first), int(last_off), int(nrows)
        problem = None
        if seq < expected_seq:
            problem = ("duplicate block", f"block {seq} appears twice")
        elif seq > expected_seq:
            problem = ("block missing", f"blocks {expected_seq}..{seq - 1} are missing")
        elif prev != prev_hash:
            problem = ("chain broken", "prev_hash does not match the block before")
        elif block_hash(stream, seq, first, last_off, nrows, rhash, prev) != bhash:
            problem = ("block altered", "the block's fields do not match its hash")
        elif list(cols) != columns:
            problem = ("block altered", "sealed over other columns than the chain")
        else:
            got_rows, got_hash = recomputed.get(seq, (0, ""))
            if got_rows != nrows:
                problem = ("rows altered", f"{got_rows} rows in offsets {first}..{last_off}, sealed {nrows}")
            elif got_hash != rhash:
                problem = ("rows altered", f"rows in offsets {first}..{last_off} differ from what was sealed")
        if problem is not None:
            result.first_problem = Finding(stream, seq if problem[0] != "block missing" else expected_seq, *problem)
            return result
        result.verified += 1
        prev_hash, expected_seq = bhash, seq + 1
    return result


def chain_heads(rows: Rows) -> list[list[Any]]:
    """The newest block of every stream: (stream, seq, block_hash, last_offset, sealed_at)."""
    return rows(
        f"SELECT stream, max(seq) AS head_seq, argMax(block_hash, seq), argMax(last_offset, seq), "  # noqa: S608
        f"toUnixTimestamp64Milli(argMax(sealed_at, seq)) FROM {CUSTODY_TABLE} GROUP BY stream ORDER BY stream", {})


def block_at(rows: Rows, stream: str, seq: int) -> str | None:
    found = rows(f"SELECT block_hash FROM {CUSTODY_TABLE} WHERE stream = {{s:String}} AND seq = {{q:UInt64}}",  # noqa: S608
                 {"s": stream, "q": seq})
    return found[0][0] if found else None
