"""One insert as one block of ClickHouse's Native format, the same bytes for chDB and a server.

Columns are written by clickhouse-connect's own column writers, with one exception: a Nullable
column that is NULL in every row of the batch. Most events leave most optional fields unset (the
S3 fields on file events, the content fields on deletes), and the driver writes such a column in
two passes of per-row Python (the null map, then a default value per NULL); here its bytes are
one repeated null-map byte and one repeated default value, made in C. Measured on a 50k-row events
batch: half of the client-side encoding time went to the all-NULL columns. The column is still
sent (not left out of the insert): leaving columns out made the engine's side of the insert about
twice as slow, as it then computes their defaults itself.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def write_leb128(value: int, out: bytearray) -> None:
    # clickhouse-connect has one too, but this module is imported (through chbackend) by processes
    # of the lean agent install, which has no clickhouse-connect: tests/test_install_lean.py.
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return

# type name -> the bytes of one NULL row's default value, or None where the shortcut does not hold
_NULL_ROWS: dict[str, bytes | None] = {}


def _null_row(ch_type: Any, ctx: Any) -> bytes | None:
    """The per-row default value bytes the driver writes for NULL in ``ch_type``, if a column of
    NULLs is exactly a null map of ones and that value repeated (checked on 1 and 2 rows)."""
    name = ch_type.insert_name
    if name in _NULL_ROWS:
        return _NULL_ROWS[name]
    row: bytes | None = None
    if ch_type.nullable and not ch_type.low_card:
        one, two = bytearray(), bytearray()
        ch_type.write_column([None], one, ctx)
        ch_type.write_column([None, None], two, ctx)
        if one[:1] == b"\x01" and bytes(two) == b"\x01\x01" + bytes(one[1:]) * 2:
            row = bytes(one[1:])
    _NULL_ROWS[name] = row
    return row


def native_block(names: Sequence[str], types: Sequence[Any], columns: Sequence[Sequence[Any]], ctx: Any) -> bytes:
    """The Native block of ``columns`` (one sequence per column, all of one length). ``ctx`` is the
    clickhouse-connect InsertContext whose settings the column writers read (encoding, formats)."""
    rows = len(columns[0]) if columns else 0
    out = bytearray()
    write_leb128(len(names), out)
    write_leb128(rows, out)
    for name, ch_type, column in zip(names, types, columns, strict=True):
        if len(column) != rows:
            raise ValueError(f"column {name} has {len(column)} rows, not {rows}")
        for text in (name, ch_type.insert_name):
            encoded = text.encode()
            write_leb128(len(encoded), out)
            out += encoded
        null_row = _null_row(ch_type, ctx) if rows else None
        if null_row is not None and column.count(None) == rows:
            out += b"\x01" * rows
            out += null_row * rows
            continue
        ctx.start_column(name)
        ch_type.write_column(column, out, ctx)
    return bytes(out)
