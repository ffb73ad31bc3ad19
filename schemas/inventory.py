"""One file seen by an inventory scan: the row of the ``inventory`` table (same names, same order)."""
from __future__ import annotations

import msgspec


class InventoryRow(msgspec.Struct, frozen=True, kw_only=True):
    scan_id: str
    scanned_at: int  # epoch ms
    device: str
    root: str
    path: str  # text form of schemas.paths (names_escaped when not UTF-8)
    size: int
    mtime: int  # epoch ms
    owner: str
    owner_uid: str
    file_type: str  # from magic bytes (see agents/content), "directory" is never listed
    names_escaped: bool = False
