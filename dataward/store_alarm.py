"""The store's disk is full: an alarm event, so that the detectors page a human (``agent_alarm``).

Both modes raise it once per episode: the distributed sink produces it to dw.events (the workers
turn it into an alert on dw.alerts, and the sink stores it once space returns); the embedded
mode puts it on its in-process bus. Nothing is refused while the disk is full: the sink keeps its
batch and leaves the rest in Kafka, the embedded batcher holds its rows and retries.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from dwcore.agents.watcher import agent_user
from dwcore.logfmt import kv
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event
from dwcore.sinks.errors import StoreDiskFull

log = logging.getLogger(__name__)

ALARM_STORE_DISK_FULL = "store_disk_full"


def store_disk_full_event(device: str, message: str) -> AccessEvent:
    return make_event(Activity.OTHER, uid=uuid.uuid4().hex, time=int(time.time() * 1000), user_name=agent_user(),
                      attribution=Attribution.AGENT, device=device, source=Source.AGENT, file_path=device,
                      alarm=ALARM_STORE_DISK_FULL, message=message)


def alarm_when_disk_full(insert: Callable[[Any], int], publish: Callable[[list[AccessEvent]], None], device: str,
                         where: str) -> Callable[[Any], int]:
    """The embedded events insert, raising a store_disk_full alarm on the bus once per episode (the
    batcher keeps the rows and retries; detection and alerts go on meanwhile). ``where`` is the
    store's location with its secrets redacted."""
    full = threading.Event()

    def call(events: Any) -> int:
        try:
            done = insert(events)
        except StoreDiskFull as exc:
            if not full.is_set():
                full.set()
                log.error("store_disk_full %s", kv(action="alarm", pending=len(events), error=exc))
                publish([store_disk_full_event(device, (
                    f"The store's disk is full: {len(events)} events and everything after them are held in "
                    "memory and retried (nothing is dropped; stopping now parks them on disk). Free space "
                    f"under {where}; storing resumes by itself."))])
            raise
        if full.is_set():
            full.clear()
            log.warning("store_disk_space_returned %s", kv(action="alarm_cleared"))
        return done

    return call
