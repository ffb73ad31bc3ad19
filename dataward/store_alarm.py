"""The store's disk is full: an alarm event, so that the detectors page a human (``agent_alarm``).

Both modes raise it once per episode: the distributed sink produces it to dw.events (the workers
turn it into an alert on dw.alerts, and the sink stores it once space returns); the embedded
mode puts it on its in-process bus. Nothing is refused while the disk is full: the sink keeps its
batch and leaves the rest in Kafka, the embedded batcher holds its rows and retries.
"""
from __future__ import annotations

import time
import uuid

from dwcore.agents.watcher import agent_user
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event

ALARM_STORE_DISK_FULL = "store_disk_full"


def store_disk_full_event(device: str, message: str) -> AccessEvent:
    return make_event(Activity.OTHER, uid=uuid.uuid4().hex, time=int(time.time() * 1000), user_name=agent_user(),
                      attribution=Attribution.AGENT, device=device, source=Source.AGENT, file_path=device,
                      alarm=ALARM_STORE_DISK_FULL, message=message)
