"""The fast path: the agent runs the same pure detectors on its own events, before any broker.

A canary touch, a ransom note or an encryption burst is decided here, in the watcher's dispatch
thread, milliseconds after the kernel reported it; ``on_alert`` receives each alert (the wiring
writes it to a local JSONL file, runs the response hooks and publishes it). The stream workers
still see every event and hold the user's view across servers; this path only has the events of
this one agent, with a bounded number of users kept.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from dwcore.detectors import engine
from dwcore.detectors.policy import Policy
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent

log = logging.getLogger(__name__)


class FastPath:
    __name__ = "fastpath"

    def __init__(self, policy: Policy, on_alert: Sequence[Callable[[Alert], None]], *, max_users: int = 10_000,
                 evaluate: Callable = engine.evaluate) -> None:
        self.policy = policy
        self._on_alert = list(on_alert)
        self._evaluate = evaluate
        self._states: OrderedDict[str, object] = OrderedDict()
        self._max_users = max_users
        self._lock = threading.Lock()
        self.counters = {"events": 0, "alerts": 0, "callback_errors": 0}
        self.last_alert_ns = 0

    def __call__(self, batch: list[AccessEvent]) -> list[AccessEvent]:
        by_user: dict[str, list[AccessEvent]] = {}
        for ev in batch:
            by_user.setdefault(ev.user_name, []).append(ev)
        alerts: list[Alert] = []
        with self._lock:
            for user, events in by_user.items():
                state, found = self._evaluate(self._states.get(user), user, events, self.policy)
                self._states[user] = state
                self._states.move_to_end(user)
                alerts += found
            while len(self._states) > self._max_users:
                self._states.popitem(last=False)
            self.counters["events"] += len(batch)
            self.counters["alerts"] += len(alerts)
        for alert in alerts:
            self.last_alert_ns = time.monotonic_ns()
            log.warning("agent_alert rule=%s severity=%s user=%s files=%d uid=%s", alert.rule, alert.severity,
                        alert.user, alert.file_count, alert.uid)
            for cb in self._on_alert:
                try:
                    cb(alert)
                except Exception:
                    self.counters["callback_errors"] += 1
                    log.exception("agent_alert_callback_failed rule=%s uid=%s", alert.rule, alert.uid)
        return batch
