"""The data-collection stage's inventory: size, type, owner and age of every file under a root.

A walk of the tree (no links followed) yields one ``InventoryRow`` per regular file; the type
comes from the first bytes (the same magic table as the content signals, 512 bytes read per
file), so a ``.csv`` that is really a zip says so. Reading is bounded by ``bytes_per_s`` like the
agent's sampling; a file it cannot afford or read is typed by its extension only.
"""
from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator

from dwcore.agents.attribution import OwnerResolver
from dwcore.agents.content import ByteBudget
from dwcore.agents.magic import EXPECTED, magic_type
from dwcore.schemas.inventory import InventoryRow
from dwcore.schemas.paths import name_text

HEAD = 512


def _by_extension(name: bytes) -> str:
    ext = os.path.splitext(os.fsdecode(name))[1].lower()
    kinds = EXPECTED.get(ext)
    return sorted(kinds)[0] if kinds and len(kinds) == 1 else (ext.lstrip(".") or "unknown")


def file_type(path: bytes, size: int, budget: ByteBudget | None = None) -> str:
    if size == 0:
        return "empty"
    if budget is not None and not budget.take(HEAD):
        return _by_extension(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return _by_extension(path)
    try:
        head = os.pread(fd, HEAD, 0)
    except OSError:
        return _by_extension(path)
    finally:
        os.close(fd)
    kind = magic_type(head, b"", size)
    return kind if kind != "unknown" else _by_extension(path)


def scan(root: str, device: str, *, exclude: tuple[str, ...] = (), bytes_per_s: int = 64 * 1024 * 1024,
         clock: Callable[[], float] = time.time, on_dir: Callable[[str], None] | None = None
         ) -> Iterator[InventoryRow]:
    root_b = os.fsencode(os.path.abspath(root))
    excluded = tuple(os.fsencode(os.path.abspath(x)) for x in exclude)
    scan_id = uuid.uuid4().hex
    now = int(clock() * 1000)
    owners = OwnerResolver(max_paths=1)
    budget = ByteBudget(bytes_per_s) if bytes_per_s else None
    root_text = name_text(root_b)[0]
    stack = [root_b]
    while stack:
        d = stack.pop()
        if on_dir is not None:
            on_dir(name_text(d)[0])
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                p = e.path
                if any(p == x or p.startswith(x + b"/") for x in excluded):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(p)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                text, escaped = name_text(p)
                owner = owners.owner_of_uid(st.st_uid)
                yield InventoryRow(scan_id=scan_id, scanned_at=now, device=device, root=root_text, path=text,
                                   size=st.st_size, mtime=st.st_mtime_ns // 1_000_000, owner=owner.user_name,
                                   owner_uid=owner.user_uid, file_type=file_type(p, st.st_size, budget),
                                   names_escaped=escaped)
