"""Delivery to one destination: a thread that drains its outbox lane, at least once.

Per request: render (one alert, or a digest when the rate limit would hold several back), sign
(webhook), POST, then by the answer:
- 2xx: delivered; ack the alerts in the outbox.
- 429: wait ``Retry-After`` (or the backoff when absent), then the same request again.
- 410 Gone: the destination is disabled, loudly; its alerts stay in the outbox for the next start.
- 400/413/422: this payload is refused for good; kept in ``rejected.jsonl``, acked, next one.
- anything else (5xx, 401/403/404, timeouts, refused connections): exponential backoff with
  jitter, forever; alerts wait in the outbox, in order.
A retried request keeps its ``webhook-id`` (same alerts, same id); ``webhook-timestamp`` and the
signature are fresh per attempt, as the Standard Webhooks spec expects. Every attempt is one
``Delivery`` row per alert it carried.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from dwcore.backoff import Backoff
from dwcore.metrics import DELIVERIES
from dwcore.schemas.alert import Alert
from dwcore.schemas.delivery import Delivery
from dwcore.sinks.alert_formats import can_digest, is_test, render
from dwcore.sinks.alert_routing import Destination
from dwcore.sinks.alert_text import visible
from dwcore.sinks.http_post import Response, post, retry_after_s
from dwcore.sinks.outbox import Item, Lane
from dwcore.sinks.pacing import Clock, TokenBucket
from dwcore.sinks.signing import secret_key, signed_headers

log = logging.getLogger(__name__)

Transport = Callable[[str, bytes, dict[str, str], float], Response]
MAX_DIGEST = 100
MAX_RETRY_AFTER_S = 3600.0
PERMANENT = {400, 413, 422}


def outcome_of(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "disabled"
    if status in PERMANENT:
        return "rejected"
    return "retry"


class Attempt:
    """The result of one request, for the caller and for the deliveries table."""

    def __init__(self, msg_id: str, response: Response, attempt: int) -> None:
        self.msg_id = msg_id
        self.response = response
        self.attempt = attempt
        self.outcome = outcome_of(response.status)

    @property
    def error(self) -> str:
        r = self.response
        if self.outcome == "delivered":
            return ""
        if r.error:
            return r.error
        return f"HTTP {r.status}: {visible(r.body.decode('utf-8', 'replace'), 200)}"


def send_once(dest: Destination, alerts: Sequence[Alert], attempt: int, now_ms: int,
              transport: Transport = post) -> Attempt:
    """Render, sign and POST one request carrying ``alerts`` (one, or a digest)."""
    rendered = render(dest.kind, alerts, now_ms, routing_key=dest.secret if dest.kind == "pagerduty" else "")
    headers: dict[str, str] = {}
    if dest.kind == "webhook":
        headers = signed_headers(secret_key(dest.secret), rendered.msg_id, now_ms // 1000, rendered.body)
    response = transport(dest.url, rendered.body, headers, dest.timeout_s)
    return Attempt(rendered.msg_id, response, attempt)


class Deliverer:
    def __init__(
        self,
        dest: Destination,
        lane: Lane,
        record: Callable[[list[Delivery]], object],
        *,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        transport: Transport = post,
        burst: int = 1,
        on_delivered: Callable[[str, list[Alert], Attempt], None] | None = None,
    ) -> None:
        self.dest = dest
        self.lane = lane
        self.record = record
        self.clock = clock or Clock()
        self.backoff = backoff or Backoff(0.5, 60.0)
        self.transport = transport
        self.bucket = TokenBucket(dest.rate_per_minute, burst, self.clock)
        self.on_delivered = on_delivered
        self.disabled = False
        self.counters = {"delivered": 0, "attempts": 0, "retries": 0, "rejected": 0, "digests": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"deliver-{self.dest.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.lane.wake()
        if self._thread:
            self._thread.join(timeout)

    @property
    def idle(self) -> bool:
        return self.disabled or (not self._busy and self.lane.pending == 0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.lane.wait(0.5):
                    continue
                self._busy = True
                try:
                    self.step()
                finally:
                    self._busy = False
                if self.disabled:
                    return
        except Exception:
            # A bug here must not go unnoticed: the alerts are still in the outbox for a restart.
            log.exception("deliverer_crashed destination=%s pending=%d", self.dest.name, self.lane.pending)

    # -- one request ----------------------------------------------------------------------

    def pick(self, items: Sequence[Item]) -> list[Item]:
        """What the next request carries: one alert while the rate limit has room for the whole
        backlog, else everything digestible (up to MAX_DIGEST) in one digest."""
        if len(items) <= 1 or self.bucket.available() >= len(items) or not can_digest(self.dest.kind, items[0][1]):
            return list(items[:1])
        group = [it for it in items if can_digest(self.dest.kind, it[1])]
        return group[:MAX_DIGEST]

    def step(self) -> None:
        """Deliver the next request from the lane (retrying until done or stopped)."""
        wait = self.bucket.wait_s()
        if wait > 0:
            # Alerts that arrive meanwhile join a digest instead of queueing behind the limit.
            self.clock.sleep(wait, self._stop)
            return
        items = self.lane.snapshot()
        if not items:
            return
        group = self.pick(items)
        alerts = [a for _, a in group]
        attempt = 0
        self.backoff.reset()
        while not self._stop.is_set():
            attempt += 1
            result = send_once(self.dest, alerts, attempt, self.clock.wall_ms(), self.transport)
            self.counters["attempts"] += 1
            self._record(alerts, result)
            if result.outcome == "delivered":
                self.bucket.take()
                self.lane.ack([rid for rid, _ in group])
                self.counters["delivered"] += len(group)
                if len(group) > 1:
                    self.counters["digests"] += 1
                if self.on_delivered:
                    self.on_delivered(self.dest.name, alerts, result)
                return
            if result.outcome == "disabled":
                self.disabled = True
                log.critical("destination_disabled destination=%s kind=%s status=410 pending=%d "
                             "action=fix_the_destination_and_restart (alerts stay in the outbox)",
                             self.dest.name, self.dest.kind, self.lane.pending)
                return
            if result.outcome == "rejected":
                self.counters["rejected"] += len(group)
                self.lane.reject(group, result.error)
                return
            self.counters["retries"] += 1
            delay = self.backoff.next()
            if result.response.status == 429:
                hinted = retry_after_s(result.response.headers.get("retry-after"), self.clock.wall_ms() / 1000)
                if hinted is not None:
                    delay = min(max(hinted, 0.0), MAX_RETRY_AFTER_S)
            log.warning("delivery_retry destination=%s kind=%s msg_id=%s attempt=%d status=%d delay_s=%.2f "
                        "error=%r", self.dest.name, self.dest.kind, result.msg_id, attempt,
                        result.response.status, delay, result.error[:200])
            self.clock.sleep(delay, self._stop)

    def _record(self, alerts: Sequence[Alert], result: Attempt) -> None:
        DELIVERIES.labels(self.dest.name, result.outcome).inc()
        r = result.response
        now = self.clock.wall_ms()
        rows = [
            Delivery(time=now, alert_uid=a.uid, alert_version=a.version, destination=self.dest.name,
                     kind=self.dest.kind, attempt=result.attempt, status=result.outcome,
                     http_status=r.status or None, latency_ms=round(r.latency_ms), error=result.error,
                     message_id=result.msg_id, digest_size=len(alerts), test=is_test(a))
            for a in alerts
        ]
        log.info("alert_delivery destination=%s kind=%s msg_id=%s alerts=%d attempt=%d status=%d outcome=%s "
                 "latency_ms=%.1f", self.dest.name, self.dest.kind, result.msg_id, len(alerts), result.attempt,
                 r.status, result.outcome, r.latency_ms)
        try:
            self.record(rows)
        except Exception:
            log.exception("delivery_record_failed destination=%s", self.dest.name)
