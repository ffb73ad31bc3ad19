"""Enrichment between the watcher and the publisher: each stage takes a batch and returns it.

The watcher hands batches (every 50 ms or 1,000 events) to one callable; stages that add what an
event needs (content signals, who-data, canary marks) and act on it (the fast path) run in that
same dispatcher thread, batch by batch, before the batch is spooled. A stage must never drop an
event: it returns every event it got, changed or not.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import msgspec

from dwcore.agents.content import ContentSampler
from dwcore.schemas.event import AccessEvent, Activity
from dwcore.schemas.paths import name_bytes

log = logging.getLogger(__name__)

Batch = list[AccessEvent]
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
        out: Batch = []
        for ev in batch:
            act = ev.activity_id
            # Canaries are not sampled: the agent's own read would look like a touch of the decoy.
            if act in (Activity.CREATE, Activity.UPDATE) and ev.source != "agent" and not ev.canary:
                ev = self._with_signals(ev, event_path(ev.file_path, ev.names_escaped))
            elif act == Activity.RENAME and ev.file_new_path:
                old = event_path(ev.file_path, ev.names_escaped)
                new = event_path(ev.file_new_path, ev.names_escaped)
                if sampler.knows(new):
                    # A rename over a file we sampled (encrypt to a temp file, rename over the
                    # original): compare what arrived with what it replaced.
                    sampler.forget(old)
                    ev = self._with_signals(ev, new)
                else:
                    sampler.moved(old, new)
            elif act == Activity.DELETE:
                sampler.forget(event_path(ev.file_path, ev.names_escaped))
            out.append(ev)
        return out

    def _with_signals(self, ev: AccessEvent, path: bytes) -> AccessEvent:
        sig = self.sampler.sample(path)
        if sig.sample_skipped in self._QUIET:
            return ev
        return msgspec.structs.replace(ev, **sig.fields())
