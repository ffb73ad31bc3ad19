"""Who did it: the owner fallback.

Without auditd or Samba full_audit the best guess for "who" is the file's owner. It is a guess
(root editing alice's file is reported as alice), which is why events carry
``attribution=owner`` and analysts weigh it lower. A deleted or renamed-away path cannot be
stat'ed any more, so the resolver remembers the owner of every path it has seen and falls back to
the nearest surviving parent directory's owner.
"""
from __future__ import annotations

import functools
import os
import pwd
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

UNKNOWN_USER = "unknown"


class Owner(NamedTuple):
    user_name: str
    user_uid: str  # numeric uid as text, as in the event schema; "" when not known


UNKNOWN_OWNER = Owner(UNKNOWN_USER, "")


def _name_for_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        # Like ls(1): a uid without a passwd entry (NFS, containers) is shown as the number.
        return str(uid)


class OwnerResolver:
    """Maps a path to its owner; bounded memory, safe to call from one thread at a time."""

    def __init__(
        self,
        max_paths: int = 100_000,
        uid_cache: int = 4096,
        stat: Callable[[str], os.stat_result] = os.stat,
        name_for_uid: Callable[[int], str] = _name_for_uid,
    ) -> None:
        self._max_paths = max_paths
        self._stat = stat
        self._paths: OrderedDict[str, int] = OrderedDict()  # path -> uid, least recently seen first
        self._name = functools.lru_cache(maxsize=uid_cache)(name_for_uid)
        self._owners: dict[int, Owner] = {}  # one Owner per uid, built once (every event asks)
        self._uid_cache = uid_cache

    def owner_of_uid(self, uid: int) -> Owner:
        owner = self._owners.get(uid)
        if owner is None:
            if len(self._owners) >= self._uid_cache:
                self._owners.clear()
            owner = self._owners[uid] = Owner(self._name(uid), str(uid))
        return owner

    def remember(self, path: str, uid: int) -> None:
        paths = self._paths
        paths[path] = uid
        paths.move_to_end(path)
        if len(paths) > self._max_paths:
            paths.popitem(last=False)

    def forget(self, path: str) -> int | None:
        return self._paths.pop(path, None)

    def moved(self, old: str, new: str) -> None:
        uid = self.forget(old)
        if uid is not None:
            self.remember(new, uid)

    def resolve(self, path: str, st: os.stat_result | None = None) -> Owner:
        """Owner of ``path``: from ``st`` (the caller's stat) or a fresh stat; when the path is
        gone, the remembered owner, else the nearest existing parent's owner."""
        if st is None:
            try:
                st = self._stat(path)
            except OSError:
                st = None
        if st is not None:
            self.remember(path, st.st_uid)
            return self.owner_of_uid(st.st_uid)
        uid = self._paths.get(path)
        if uid is not None:
            return self.owner_of_uid(uid)
        return self._parent_owner(path)

    def _parent_owner(self, path: str) -> Owner:
        parent = os.path.dirname(path)
        while parent and parent != path:
            uid = self._paths.get(parent)
            if uid is None:
                try:
                    uid = self._stat(parent).st_uid
                except OSError:
                    uid = None
            if uid is not None:
                return self.owner_of_uid(uid)
            path, parent = parent, os.path.dirname(parent)
        return UNKNOWN_OWNER

    def __len__(self) -> int:
        return len(self._paths)
