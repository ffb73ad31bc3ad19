"""Heartbeats: every N seconds the agent says it is alive and how it is doing, so a silent agent
(dead, cut off, wedged) is visible downstream as missing or stale rows in ``heartbeats``."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dwcore.schemas.heartbeat import Heartbeat

log = logging.getLogger(__name__)


class Heartbeater:
    """``stats`` returns (events_seen, spool_depth, acked_total, spool_full); ``send`` takes a Heartbeat."""

    def __init__(self, device: str, version: str, interval_s: float, stats: Callable[[], tuple[int, int, int, bool]],
                 send: Callable[[Heartbeat], None], *, agent: str = "file",
                 clock: Callable[[], float] = time.time, stalled_status: str = "kafka_unreachable") -> None:
        self.device, self.version, self.agent = device, version, agent
        self.stalled_status = stalled_status  # what a spool that stopped draining means for this agent
        self.interval_s = interval_s
        self._stats = stats
        self._send = send
        self._clock = clock
        self._stop = threading.Event()
        self._last_acked = -1
        self._progress_at = clock()
        self._thread = threading.Thread(target=self._loop, name="dw-heartbeat", daemon=True)
        self.sent = 0

    def beat(self) -> Heartbeat:
        seen, depth, acked, full = self._stats()
        now = self._clock()
        if acked != self._last_acked or depth == 0:
            self._last_acked, self._progress_at = acked, now
        lag = int((now - self._progress_at) * 1000) if depth else None
        status = "spool_full" if full else self.stalled_status if lag is not None and lag > 30_000 else "ok"
        hb = Heartbeat(time=int(now * 1000), device=self.device, agent=self.agent, version=self.version,
                       events_seen=seen, spool_depth=depth, lag_ms=lag, status=status)
        self._send(hb)
        self.sent += 1
        return hb

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat_failed")

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
