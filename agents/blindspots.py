"""Blind spots said out loud: what the watcher cannot watch becomes a WARNING and an alarm event.

inotify fails quietly for some directories, and every such failure is a place where an attacker
works unseen: a path longer than the kernel's limit (``ENAMETOOLONG``: nest directories until the
absolute path passes PATH_MAX), a directory the agent may not read (``EACCES``), the per-user watch
limit (``ENOSPC``), and a watch root that is deleted or moved away (its watches die with it). Each
gives one WARNING log line (key=value, the path in its lossless escaped form with control
characters escaped) and one alarm event (``source=agent``, ``alarm=<kind>``) that is published and
stored like the queue-overflow and ``agent_blind`` alarms; a root that comes back gives a
``root_recreated`` alarm once it is watched again. One alarm per directory and kind: an attacker who
makes thousands of unreadable directories gets thousands of Create events, but the memory of what
was alarmed is bounded.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable

from dwcore.logfmt import kv
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event
from dwcore.schemas.paths import name_text

log = logging.getLogger(__name__)

ALARM_PATH_TOO_LONG = "path_too_long"
ALARM_DIR_UNREADABLE = "dir_unreadable"
ALARM_WATCH_LIMIT = "watch_limit"
ALARM_WATCH_FAILED = "watch_failed"
ALARM_ROOT_DELETED = "root_deleted"
ALARM_ROOT_RECREATED = "root_recreated"
REMEMBER = 10_000  # directories remembered as alarmed, per kind

_WHY = {
    ALARM_PATH_TOO_LONG: ("its path is longer than the kernel's limit (PATH_MAX, 4096 bytes), so inotify cannot "
                          "watch it: changes inside it are not seen. Nesting directories this deep is a known way "
                          "to hide; look at what is in it (cd into it step by step)."),
    ALARM_DIR_UNREADABLE: ("the agent may not read it (permission denied), so changes inside it are not seen. Run "
                           "the agent as a user that can read the share (root, or with CAP_DAC_READ_SEARCH), or "
                           "check who made this directory unreadable."),
    ALARM_WATCH_LIMIT: ("the per-user inotify watch limit is reached, so this directory and the ones after it are "
                        "not watched. Raise fs.inotify.max_user_watches (see docs/agents.md)."),
    ALARM_WATCH_FAILED: "inotify refused to watch it, so changes inside it are not seen.",
}


def failure_kind(err: int | None) -> str | None:
    """The alarm for an ``inotify_add_watch`` error; None when nothing is missed (the directory
    is already gone again: its parent reported the delete)."""
    if err in (errno.ENOENT, errno.ENOTDIR):
        return None
    if err == errno.ENAMETOOLONG:
        return ALARM_PATH_TOO_LONG
    if err in (errno.EACCES, errno.EPERM):
        return ALARM_DIR_UNREADABLE
    if err == errno.ENOSPC:
        return ALARM_WATCH_LIMIT
    return ALARM_WATCH_FAILED


def log_text(text: str) -> str:
    """A name as it may appear in a log line: every control character (C0, DEL, C1) escaped, so a
    name cannot move a terminal's cursor or forge a second line in the log."""
    return "".join(c if c.isprintable() or c == " " else f"\\u{ord(c):04x}" for c in text)


class BlindSpots:
    """``hand_over`` takes a batch of alarm events (the watcher's own queue to ``emit``)."""

    def __init__(self, device: str, agent_user: str, hand_over: Callable[[list[AccessEvent]], None],
                 new_uid: Callable[[], str], clock: Callable[[], float] = time.time) -> None:
        self.device = device
        self._agent_user = agent_user
        self._hand_over = hand_over
        self._new_uid = new_uid
        self._clock = clock
        self._alarmed: dict[str, set[bytes]] = {}
        self.counters: dict[str, int] = {}

    def _alarm(self, kind: str, root: bytes, path: bytes, message: str, **fields: object) -> None:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        root_t, esc_root = name_text(root)
        path_t, esc_path = name_text(path)
        log.warning("blind_spot %s", kv(alarm=kind, device=self.device, root=log_text(root_t),
                                        path=log_text(path_t), **fields))
        self._hand_over([make_event(
            Activity.OTHER, uid=self._new_uid(), time=int(self._clock() * 1000), user_name=self._agent_user,
            attribution=Attribution.AGENT, device=self.device, source=Source.AGENT, share=root_t,
            file_path=path_t, names_escaped=esc_root or esc_path, alarm=kind, message=message,
        )])

    def watch_failed(self, root: bytes, path: bytes, exc: OSError) -> None:
        kind = failure_kind(exc.errno)
        if kind is None:
            return
        seen = self._alarmed.setdefault(kind, set())
        if path in seen:
            return
        if len(seen) < REMEMBER:
            seen.add(path)
        reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        where, extra = path, {}
        if kind == ALARM_PATH_TOO_LONG:
            # An event path is at most 4096 characters: the alarm names the parent (which is
            # watched) and the directory beneath it whose path is too long.
            where, name = os.path.split(path)
            extra = {"name": log_text(name_text(name)[0]), "path_bytes": len(path)}
            subject = f"The directory {name_text(name)[0]!r} in this one ({len(path)} bytes of path) is not watched"
        else:
            subject = "A directory under this root is not watched"
        self._alarm(kind, root, where, f"{subject}: {_WHY[kind]} ({reason})", error=reason, **extra,
                    action="not_watched")

    def root_deleted(self, root: bytes, moved: bool) -> None:
        how = "moved away" if moved else "deleted"
        self._alarmed.clear()  # a recreated tree is new: its problems are worth saying again
        self._alarm(ALARM_ROOT_DELETED, root, root,
                    f"The watch root was {how}: nothing under this path is watched until it exists again (the "
                    "agent checks every second and watches it again when it does). Activity in the gap is not "
                    "recorded; a deleted share root is itself an incident.", action="waiting_for_root", how=how)

    def root_recreated(self, root: bytes, gone_s: float, found: int) -> None:
        self._alarm(ALARM_ROOT_RECREATED, root, root,
                    f"The watch root exists again after {gone_s:.1f} s and is watched again; the {found} entries "
                    "found in it are reported as Creates. Changes made while it was gone are not recorded.",
                    action="watched_again", gone_s=f"{gone_s:.1f}", found=found)
