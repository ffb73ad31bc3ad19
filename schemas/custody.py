"""A custody block: a sealed run of stored events, chained to the block before it.

The rows of a block are the events of one stream (``_src``: a Kafka "topic:partition", or
"embedded") whose positions (``_offset``) lie in ``first_offset..last_offset``. ``rows_hash`` is the
SHA-256 over the SHA-256 of each row (its ``columns`` as text) in offset order; ``block_hash``
covers the block's own fields and ``prev_hash``, so changing, adding or removing any row, or any
block, breaks the chain from there on. Times are epoch milliseconds like the events.
"""
from __future__ import annotations

import hashlib

import msgspec


class CustodyBlock(msgspec.Struct, kw_only=True, frozen=True):
    stream: str
    seq: int
    first_offset: int
    last_offset: int
    rows: int
    min_time: int
    max_time: int
    columns: list[str]
    rows_hash: str
    prev_hash: str
    block_hash: str
    sealed_at: int


def block_hash(stream: str, seq: int, first_offset: int, last_offset: int, rows: int, rows_hash: str,
               prev_hash: str) -> str:
    """The hash that chains a block: its identity, its range, its rows' hash and the previous hash."""
    text = f"dataward-custody-v1\n{stream}\n{seq}\n{first_offset}\n{last_offset}\n{rows}\n{rows_hash}\n{prev_hash}"
    return hashlib.sha256(text.encode()).hexdigest()
