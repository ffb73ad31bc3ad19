"""The fast path: the agent runs the same pure detectors on its own events, before any broker.

A canary touch, a ransom note or an encryption burst is decided here, milliseconds after the
kernel reported it; ``on_alert`` receives each alert (the wiring writes it to a local JSONL file,
runs the response hooks and publishes it). The stream workers still see every event and hold the
user's view across servers; this path only has the events of this one agent.

The detectors run in their own thread, fed through a bounded queue, so capture and publishing
never wait for them (measured: the engine costs 0.4-0.9 ms per event, far below the agent's
capture rate). When the queue is full, ordinary events are shed from the fast path only (they are
still published; the workers see them) and counted; events that must page at once (canary
touches, agent alarms, partial encryption) are never shed and are evaluated first.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from dwcore.detectors import engine
from dwcore.detectors.policy import Policy
from dwcore.logfmt import kv
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent

log = logging.getLogger(__name__)


EARLY_COVER_S = 5.0
SLICE = 1000  # ordinary events per evaluation: ~0.1 s of detector work at ~0.1 ms per event; no
# smaller, because an incident's first version is decided per evaluation (a 300-file drill must
# alert once at its final severity, not at the first slice's)
MAX_EARLY = 10_000


def urgent(ev: AccessEvent) -> bool:
    return ev.canary or ev.alarm is not None or ev.partial_encryption is not None


class FastPath:
    __name__ = "fastpath"

    def __init__(self, policy: Policy, on_alert: Sequence[Callable[[Alert], None]], *, max_users: int = 10_000,
                 max_pending: int = 50_000, evaluate: Callable = engine.evaluate, threaded: bool = True) -> None:
        self.policy = policy
        self._on_alert = list(on_alert)
        self._evaluate = evaluate
        self._states: OrderedDict[str, object] = OrderedDict()
        self._max_users = max_users
        self._max_pending = max_pending
        self._cv = threading.Condition()
        self._urgent: deque[AccessEvent] = deque()
        self._normal: deque[AccessEvent] = deque()
        self._busy = False
        self._stopping = False
        # Touches evaluated early (``early``), so the stage chain's copy is not counted twice:
        # event uid (a published event) or (path, activity) (the file watcher's own event of it).
        self._early: OrderedDict[object, float] = OrderedDict()
        self.counters = {"events": 0, "alerts": 0, "shed": 0, "callback_errors": 0, "errors": 0}
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="dw-fastpath", daemon=True)
            self._thread.start()

    def early(self, events: list[AccessEvent], published: bool) -> None:
        """Urgent events from a side watch (a canary touch), evaluated at once, ahead of the stage
        chain and its batches. ``published``: the same event objects will also come through the
        chain (skipped there); else the file watcher reports the touch itself (its first event of
        that path and activity within ``EARLY_COVER_S`` is skipped)."""
        now = time.monotonic()
        with self._cv:
            marks = self._early
            for ev in events:
                marks[ev.uid if published else (ev.file_path, int(ev.activity_id))] = now
            while marks and (len(marks) > MAX_EARLY or next(iter(marks.values())) < now - EARLY_COVER_S):
                marks.popitem(last=False)
            if self._thread is not None:
                self._urgent.extend(events)
                self._cv.notify()
        if self._thread is None:
            self.process(events)

    def _covered(self, ev: AccessEvent, now: float) -> bool:
        at = self._early.pop(ev.uid, None)
        if at is None and ev.canary:
            at = self._early.pop((ev.file_path, int(ev.activity_id)), None)
        return at is not None and now - at <= EARLY_COVER_S

    def __call__(self, batch: list[AccessEvent]) -> list[AccessEvent]:
        """The pipeline stage: hands the batch over and returns it unchanged at once."""
        if self._thread is None:
            with self._cv:
                now = time.monotonic()
                todo = [ev for ev in batch if not self._covered(ev, now)] if self._early else batch
            self.process(todo)
            return batch
        with self._cv:
            room = self._max_pending - len(self._normal)
            early, now = bool(self._early), time.monotonic()
            for ev in batch:
                if early and self._covered(ev, now):
                    continue
                if urgent(ev):
                    self._urgent.append(ev)
                elif room > 0:
                    self._normal.append(ev)
                    room -= 1
                else:
                    self.counters["shed"] += 1
            self._cv.notify()
        return batch

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._urgent and not self._normal and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._urgent and not self._normal:
                    return
                # Urgent events first, alone, so a canary touch is not queued behind a burst; ordinary
                # ones in slices, so an urgent one waits for one slice at most, never for a burst.
                if self._urgent:
                    batch = list(self._urgent)
                    self._urgent.clear()
                else:
                    normal = self._normal
                    batch = [normal.popleft() for _ in range(min(SLICE, len(normal)))]
                self._busy = True
            try:
                self.process(batch)
            except Exception:
                self.counters["errors"] += 1
                log.exception("fastpath_failed %s", kv(events=len(batch)))
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def process(self, batch: Sequence[AccessEvent]) -> list[Alert]:
        """Evaluates ``batch`` now, in this thread; calls ``on_alert`` for each alert."""
        by_user: dict[str, list[AccessEvent]] = {}
        for ev in batch:
            by_user.setdefault(ev.user_name, []).append(ev)
        alerts: list[Alert] = []
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
            log.warning("agent_alert %s", kv(
                rule=alert.rule, severity=alert.severity, user=alert.user, files=alert.file_count, uid=alert.uid))
            for cb in self._on_alert:
                try:
                    cb(alert)
                except Exception:
                    self.counters["callback_errors"] += 1
                    log.exception("agent_alert_callback_failed %s", kv(rule=alert.rule, uid=alert.uid))
        return alerts

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._urgent or self._normal or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Evaluates what is queued (up to ``timeout``), then stops."""
        if self._thread is None:
            return
        self.wait_idle(timeout)
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)
        self._thread = None
