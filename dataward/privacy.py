"""The data dir is private: 0700 directories, 0600 files, whatever the umask the process got.

It holds forensic history (who touched which file), alerts, parked events, the spool and the
query endpoint's token; none of it is for other local users. The process umask becomes 077 so that
everything created later (chDB's own parts and logs included) is born private; what already exists
(a data dir from an older version, or made under a loose umask) is tightened at start.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from dwcore.logfmt import kv

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077


def private_umask() -> None:
    """Everything this process creates from now on is owner-only."""
    os.umask(PRIVATE_UMASK)


def make_private(path: str | os.PathLike[str]) -> int:
    """Create ``path`` if needed and tighten it and everything under it. Returns how many modes changed.

    Symlinks are not followed: a link planted in the data dir must not make us chmod its target.
    """
    private_umask()
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        changed += _tighten(dirpath, 0o700)
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                changed += _tighten(full, 0o600, st.st_mode)
    if changed:
        log.info("data_dir_tightened %s", kv(path=root, changed=changed))
    return changed


def _tighten(path: str, mode: int, current: int | None = None) -> int:
    if current is None:
        current = os.lstat(path).st_mode
    if stat.S_ISLNK(current) or current & 0o077 == 0:
        return 0
    os.chmod(path, stat.S_IMODE(current) & mode)  # lstat said: not a link
    return 1
