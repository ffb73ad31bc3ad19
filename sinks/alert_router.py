"""Alerts from detection to people, the same in both modes.

``commit(alerts)`` routes each alert to the destinations whose filters match and writes it to
their outbox lanes, durably, before it returns; drills are recorded (``skipped_drill``) but never
queued. ``publish(alerts)`` then calls the in-process subscribers (console, JSONL, the backup
controller...), each on its own, so one failing callback cannot stop the others. One deliverer
thread per destination drains its lane.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dwcore.backoff import Backoff
from dwcore.schemas.alert import Alert
from dwcore.schemas.delivery import Delivery
from dwcore.sinks.alert_formats import is_test, message_id
from dwcore.sinks.alert_routing import Destination, route, system_groups
from dwcore.sinks.deliverer import Deliverer, Transport
from dwcore.sinks.http_post import post
from dwcore.sinks.outbox import Outbox
from dwcore.sinks.pacing import Clock

log = logging.getLogger(__name__)

AlertCallback = Callable[[Alert], object]


class AlertRouter:
    def __init__(
        self,
        outbox_dir: Path | str,
        destinations: Sequence[Destination],
        record: Callable[[list[Delivery]], object] = lambda rows: None,
        *,
        clock: Clock | None = None,
        backoff: Callable[[], Backoff] = lambda: Backoff(0.5, 60.0),
        transport: Transport = post,
        groups_of: Callable[[str], frozenset[str]] = system_groups,
        fsync: bool = True,
        subscribers: list[AlertCallback] | None = None,
    ) -> None:
        names = [d.name for d in destinations]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be unique")
        self.destinations = list(destinations)
        self.clock = clock or Clock()
        self.record = record
        self.groups_of = groups_of
        # The caller may pass its own list so callbacks added before the router exists still count.
        self.subscribers: list[AlertCallback] = subscribers if subscribers is not None else []
        self.outbox = Outbox(outbox_dir, names, fsync=fsync)
        self.deliverers = {
            d.name: Deliverer(d, self.outbox.lanes[d.name], record, clock=self.clock, backoff=backoff(),
                              transport=transport)
            for d in destinations
        }
        self.counters = {"committed": 0, "queued": 0, "drills": 0, "subscriber_errors": 0}

    def subscribe(self, callback: AlertCallback) -> None:
        """Called for every alert after it is safe in the outbox (in the detecting thread: keep it quick)."""
        self.subscribers.append(callback)

    def start(self) -> None:
        for d in self.deliverers.values():
            d.start()
        if self.destinations:
            log.info("alert_router_started destinations=%s pending=%d",
                     ",".join(f"{d.name}:{d.kind}" for d in self.destinations), self.outbox.pending)

    def commit(self, alerts: Sequence[Alert]) -> None:
        """Durably queue the alerts for their destinations; raises (nothing half-promised) on failure."""
        if not alerts:
            return
        live = [a for a in alerts if not a.drill]
        drills = [a for a in alerts if a.drill]
        routed = route(self.destinations, live, self.groups_of)
        self.outbox.append(routed)
        self.counters["committed"] += len(alerts)
        self.counters["queued"] += sum(len(v) for v in routed.values())
        if drills:
            self._record_drills(drills)

    def _record_drills(self, drills: Sequence[Alert]) -> None:
        now = int(time.time() * 1000)
        rows = []
        for name, alerts in route(self.destinations, drills, self.groups_of).items():
            kind = self.deliverers[name].dest.kind
            rows += [Delivery(time=now, alert_uid=a.uid, alert_version=a.version, destination=name, kind=kind,
                              attempt=0, status="skipped_drill", http_status=None, latency_ms=0,
                              error="drill: recorded, never paged", message_id=message_id(a), test=is_test(a))
                     for a in alerts]
        self.counters["drills"] += len(drills)
        if rows:
            try:
                self.record(rows)
            except Exception:
                log.exception("delivery_record_failed what=drills")

    def publish(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            for callback in self.subscribers:
                try:
                    callback(alert)
                except Exception:
                    self.counters["subscriber_errors"] += 1
                    log.exception("alert_subscriber_failed uid=%s callback=%s", alert.uid,
                                  getattr(callback, "__qualname__", repr(callback)))

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """True once every live destination has delivered what is queued (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(d.idle for d in self.deliverers.values()):
                return True
            time.sleep(0.01)
        return False

    def stop(self, grace_s: float = 5.0) -> None:
        """Give deliverers ``grace_s`` to finish what is queued; the rest waits in the outbox."""
        if self.outbox.pending:
            self.wait_idle(grace_s)
        for d in self.deliverers.values():
            d.stop()
        self.outbox.close()
        if self.outbox.pending:
            log.warning("alert_router_stopped pending=%d (kept in %s; delivered on next start)",
                        self.outbox.pending, self.outbox.directory)
