"""Drills: a simulated attack that must be detected but must page nobody.

A drill writes only inside a directory of its own named ``.dataward-drill-<run id>`` (16 hex
digits, fresh per run). An event counts as part of that drill only when every path it names lies
inside the same drill directory: renaming, copying over or deleting a file from outside it is
never a drill, so real data cannot be destroyed under the drill's cover. Drill events form an
incident of their own per run (so a second drill inside the first one's cooldown is still
detected on its own) and its alerts carry ``drill=True``: stored and shown, never paged.
"""
from __future__ import annotations

import re

from dwcore.schemas.event import AccessEvent

DRILL_DIR_PREFIX = ".dataward-drill-"
_COMPONENT = re.compile(r"\.dataward-drill-([0-9a-f]{16})")
# Separates the rule's own incident key from the drill run: drills never share an incident.
KEY_SEPARATOR = "\x1ddrill:"


def drill_dir_name(run_id: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{16}", run_id):
        raise ValueError("a drill run id is 16 lowercase hex digits")
    return f"{DRILL_DIR_PREFIX}{run_id}"


def path_drill(path: str) -> str | None:
    """The run id of the drill directory ``path`` lies in (a parent component), else None."""
    parts = path.split("/")
    for part in parts[:-1]:
        found = _COMPONENT.fullmatch(part)
        if found:
            return found.group(1)
    return None


def event_drill(ev: AccessEvent) -> str | None:
    """The drill run this event belongs to: every path it names inside one drill directory."""
    if DRILL_DIR_PREFIX not in ev.file_path:
        return None  # the common case, without splitting the path
    run = path_drill(ev.file_path)
    if run is None:
        return None
    if ev.file_new_path is not None and path_drill(ev.file_new_path) != run:
        return None
    return run


def drill_key(key: str, run: str | None) -> str:
    return f"{key}{KEY_SEPARATOR}{run}" if run else key


def is_drill_key(key: str) -> bool:
    return KEY_SEPARATOR in key
