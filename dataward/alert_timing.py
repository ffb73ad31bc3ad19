"""The embedded mode's ``alert_timing`` log line: where each alert's time went, stage by stage
(read by ``bench/detection.py`` to split the pipeline's share of the files lost)."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from dwcore.logfmt import kv
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent

log = logging.getLogger("dataward.embedded")  # the line's logger name stays what readers grep for


def log_alert_timing(events: Sequence[AccessEvent], alerts: Sequence[Alert], taken: float, detected: float,
                     durable: float) -> None:
    """Where an alert's time went (epoch ms): the newest event of its batch seen by the watcher,
    the batch taken by detection, its log records on disk, detected, and handed to every
    subscriber (console, JSONL)."""
    emitted, seen = int(time.time() * 1000), max(ev.time for ev in events)
    for a in alerts:
        log.info("alert_timing %s", kv(uid=a.uid, version=a.version, severity=a.severity, events=len(events),
                                       seen_ms=seen, taken_ms=int(taken * 1000), durable_ms=int(durable * 1000),
                                       detected_ms=int(detected * 1000), emitted_ms=emitted))
