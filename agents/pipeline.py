"""Enrichment between the watcher and the publisher: each stage takes a batch and returns it.

The watcher hands batches (every 20 ms with the inotify backend, 50 ms with watchdog, or 1,000
events) to one callable; stages that add what an event needs (content signals, who-data, canary
marks) and act on it (the fast path) run in that same dispatcher thread, batch by batch, before
the batch is spooled. A stage must never drop an event: it returns every event it got, changed or
not.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

import msgspec

from dwcore.agents.content import ContentSampler
from dwcore.schemas.event import AccessEvent, Activity
from dwcore.schemas.paths import name_bytes

log = logging.getLogger(__name__)

Batch = list[AccessEvent]
_CREATE, _UPDATE = Activity.CREATE, Activity.UPDATE
_FS_ENCODING = sys.getfilesystemencoding()  # what os.fsencode uses, without its per-call checks
Stage = Callable[[Batch], Batch]


def chain(stages: Sequence[Stage], sink: Callable[[Batch], None]) -> Callable[[Batch], None]:
    """One callable that runs ``stages`` in order, then hands the batch to ``sink``. A stage that
    raises is logged and skipped for that batch: enrichment must never cost an event."""

    def run(batch: Batch) -> None:
        for stage in stages:
            try:
                batch = stage(batch)
            except Exception:
                log.exception("stage_failed stage=%s events=%d action=passed_through",
                              getattr(stage, "__name__", type(stage).__name__), len(batch))
        sink(batch)

    return run


def event_path(text: str, escaped: bool) -> bytes:
    """The exact bytes of an event's path, to open the file it names."""
    if escaped:
        return name_bytes(text, True)
    return os.fsencode(text)  # also takes the surrogate-escaped str os.fsdecode gives


class ContentStage:
    """Adds content signals to creates and updates; keeps the sampler's cache in step with renames
    and deletes. Directories and vanished temp files get no signals, not a skip mark."""

    __name__ = "content"
    _QUIET = frozenset({"not_regular"})

    def __init__(self, sampler: ContentSampler) -> None:
        self.sampler = sampler

    def __call__(self, batch: Batch) -> Batch:
        sampler = self.sampler
        fields_of = sampler.sample_fields
        replace = msgspec.structs.replace
        quiet = self._QUIET
        # A path written twice in one batch (two watcher batches merged) is read once: both
        # events describe the same bytes, read at the same moment.
        seen: dict[bytes, dict[str, object]] = {}
        out: Batch = []
        append = out.append
        for ev in batch:
            act = ev.activity_id
            # Canaries are not sampled: the agent's own read would look like a touch of the decoy.
            if (act == _CREATE or act == _UPDATE) and ev.source != "agent" and not ev.canary:
                text = ev.file_path
                path = name_bytes(text, True) if ev.names_escaped else text.encode(_FS_ENCODING, "surrogateescape")
                fields = seen.get(path)
                if fields is None:
                    fields = seen[path] = fields_of(path, name=text, empty_hint=ev.file_size == 0)
                if fields.get("sample_skipped") not in quiet:
                    ev = replace(ev, **fields)
            elif act == Activity.RENAME and ev.file_new_path:
                old = event_path(ev.file_path, ev.names_escaped)
                new = event_path(ev.file_new_path, ev.names_escaped)
                seen.pop(old, None)
                seen.pop(new, None)
                if sampler.knows(new):
                    # A rename over a file we sampled (encrypt to a temp file, rename over the
                    # original): compare what arrived with what it replaced.
                    sampler.forget(old)
                    ev = self._with_signals(ev, new)
                else:
                    sampler.moved(old, new)
            elif act == Activity.DELETE:
                path = event_path(ev.file_path, ev.names_escaped)
                seen.pop(path, None)
                sampler.forget(path)
            append(ev)
        return out

    def _with_signals(self, ev: AccessEvent, path: bytes, empty_hint: bool = False) -> AccessEvent:
        # The event's own path text names the extension (the same as the bytes' for any extension
        # we know), which saves decoding the path again.
        fields = self.sampler.sample_fields(path, name=ev.file_new_path or ev.file_path, empty_hint=empty_hint)
        if fields.get("sample_skipped") in self._QUIET:
            return ev
        return msgspec.structs.replace(ev, **fields)
