"""Delivery against real HTTP receivers on 127.0.0.1: signatures, retries, 429, 410, a long outage,
a restart mid-outage, rate-limit digests, drills. Time is virtual (ManualClock) where the behaviour
spans minutes; the HTTP is real."""
from __future__ import annotations

import threading
import time

from dwcore.backoff import Backoff
from dwcore.sinks.alert_router import AlertRouter
from dwcore.sinks.alert_routing import Destination
from dwcore.sinks.pacing import ManualClock
from dwcore.sinks.signing import secret_key, verify
from tests.alertkit import SECRET, make_alert
from tests.procs import wait_for


def webhook(url: str, **kw) -> Destination:
    return Destination(name=kw.pop("name", "oncall"), kind=kw.pop("kind", "webhook"), url=url,
                       secret=kw.pop("secret", SECRET), **kw)


class Rows:
    def __init__(self) -> None:
        self.rows = []
        self._lock = threading.Lock()

    def __call__(self, rows) -> None:
        with self._lock:
            self.rows.extend(rows)


def make_router(tmp_path, dests, clock=None, **kw):
    rows = Rows()
    router = AlertRouter(tmp_path / "outbox", dests, rows, clock=clock,
                         backoff=kw.pop("backoff", lambda: Backoff(0.5, 30.0)), **kw)
    router.start()
    return router, rows


def test_webhook_one_signed_post_per_alert_version(tmp_path, receiver):
    rec = receiver()
    router, rows = make_router(tmp_path, [webhook(rec.url)])
    alerts = [make_alert(1), make_alert(1, severity="critical", version=2), make_alert(2)]
    router.commit(alerts)
    assert router.wait_idle(10)
    router.stop()
    key = secret_key(SECRET)
    ids = [verify(key, r.headers, r.body, now_s=time.time()) for r in rec.requests]
    assert ids == [f"{a.uid}_v{a.version}" for a in alerts]
    for req, alert in zip(rec.requests, alerts, strict=True):
        doc = req.json()
        assert doc["type"] == "dataward.alert" and doc["test"] is False
        assert doc["data"]["uid"] == alert.uid and doc["data"]["version"] == alert.version
        assert doc["data"]["class_uid"] == 2004 and doc["data"]["severity"] == alert.severity
        assert req.headers["content-type"] == "application/json"
    assert [r.status for r in rows.rows] == ["delivered"] * 3
    assert all(r.http_status == 200 and r.attempt == 1 and r.latency_ms >= 0 for r in rows.rows)


def test_500s_are_retried_with_backoff_and_the_same_id(tmp_path, receiver):
    rec = receiver(lambda req: (500, {}, b"boom") if len(rec.requests) < 3 else (200, {}, b"ok"))
    clock = ManualClock()
    router, rows = make_router(tmp_path, [webhook(rec.url)], clock=clock)
    alert = make_alert(7)
    router.commit([alert])
    assert router.wait_idle(10)
    router.stop()
    assert [r.status for r in rec.requests] == [500, 500, 500, 200]
    assert {r.headers["webhook-id"] for r in rec.requests} == {f"{alert.uid}_v1"}
    # A fresh timestamp and signature per attempt, each valid for its own timestamp.
    for r in rec.requests:
        verify(secret_key(SECRET), r.headers, r.body, now_s=int(r.headers["webhook-timestamp"]))
    assert [(r.attempt, r.status) for r in rows.rows] == [(1, "retry"), (2, "retry"), (3, "retry"),
                                                            (4, "delivered")]
    assert rows.rows[0].error.startswith("HTTP 500")
    # Exponential with jitter: each wait within [step/2, step] of 0.5, 1, 2.
    for wait, step in zip(clock.sleeps, [0.5, 1.0, 2.0], strict=True):
        assert step / 2 <= wait <= step


def test_429_waits_for_retry_after(tmp_path, receiver):
    clock = ManualClock()
    arrivals = []

    def respond(req):
        arrivals.append(clock.now())
        if len(arrivals) == 1:
            return 429, {"Retry-After": "7"}, b"slow down"
        if len(arrivals) == 2:
            # The HTTP-date form, 20 s ahead of the (virtual) wall clock.
            from email.utils import formatdate
            return 429, {"Retry-After": formatdate(clock.wall_ms() / 1000 + 20, usegmt=True)}, b""
        return 200, {}, b"ok"

    rec = receiver(respond)
    router, rows = make_router(tmp_path, [webhook(rec.url)], clock=clock)
    router.commit([make_alert(1)])
    assert router.wait_idle(10)
    router.stop()
    assert [r.status for r in rec.requests] == [429, 429, 200]
    assert arrivals[1] - arrivals[0] >= 7
    assert 19 <= arrivals[2] - arrivals[1] <= 21
    assert [r.http_status for r in rows.rows] == [429, 429, 200]


def test_outage_longer_than_a_minute_with_a_restart_loses_nothing(tmp_path, receiver):
    clock = ManualClock()
    recover_at = clock.now() + 150  # 2.5 minutes of 503s

    rec = receiver(lambda req: (503, {}, b"down") if clock.now() < recover_at else (200, {}, b"ok"))
    dest = webhook(rec.url)
    first = [make_alert(i) for i in range(10)]
    router, rows = make_router(tmp_path, [dest], clock=clock)
    router.commit(first)
    wait_for(lambda: clock.now() > recover_at - 90, 10, interval=0.01, what="a minute of outage")
    # The process restarts mid-outage: what was not delivered is still in the outbox.
    router.stop(grace_s=0)
    assert not rec.ok()
    second = [make_alert(i) for i in range(10, 20)]
    router2, rows2 = make_router(tmp_path, [dest], clock=clock)
    router2.commit(second)
    assert router2.wait_idle(20)
    router2.stop()
    assert clock.now() >= recover_at
    delivered = [r.headers["webhook-id"] for r in rec.ok()]
    expected = [f"{a.uid}_v1" for a in first + second]
    assert sorted(delivered) == sorted(expected)  # everything, each exactly once with a 2xx
    assert delivered[:10] == expected[:10]  # the backlog in order, before newer alerts
    # Every request carried a known id; retries reused it.
    assert {r.headers["webhook-id"] for r in rec.requests} <= set(expected)
    # Backoff, not a hot loop: a handful of attempts in 150 s, no wait above the 30 s cap.
    failed = [r for r in rec.requests if r.status == 503]
    assert 5 <= len(failed) <= 25
    assert max(clock.sleeps) <= 30
    assert all(r.status in ("retry", "delivered") for r in rows.rows + rows2.rows)


def test_410_disables_the_destination_and_keeps_the_alerts(tmp_path, receiver, caplog):
    gone = receiver(lambda req: (410, {}, b"gone"))
    router, rows = make_router(tmp_path, [webhook(gone.url)])
    router.commit([make_alert(1), make_alert(2)])
    wait_for(lambda: router.deliverers["oncall"].disabled, 10, what="disabled")
    router.commit([make_alert(3)])
    router.stop(grace_s=0)
    assert len(gone.requests) == 1
    assert rows.rows[0].status == "disabled" and rows.rows[0].http_status == 410
    assert any("destination_disabled" in r.message and r.levelname == "CRITICAL" for r in caplog.records)
    fixed = receiver()
    router2, _ = make_router(tmp_path, [webhook(fixed.url)])
    assert router2.wait_idle(10)
    router2.stop()
    assert [r.headers["webhook-id"] for r in fixed.requests] == [f"{make_alert(i).uid}_v1" for i in (1, 2, 3)]


def test_400_is_kept_aside_and_the_queue_moves_on(tmp_path, receiver):
    rec = receiver(lambda req: (400, {}, b"invalid_payload") if len(rec.requests) == 0 else (200, {}, b"ok"))
    router, rows = make_router(tmp_path, [webhook(rec.url)])
    router.commit([make_alert(1), make_alert(2)])
    assert router.wait_idle(10)
    router.stop()
    assert [r.status for r in rec.requests] == [400, 200]
    kept = (tmp_path / "outbox" / "oncall" / "rejected.jsonl").read_text().splitlines()
    assert len(kept) == 1 and make_alert(1).uid in kept[0]
    assert rows.rows[0].status == "rejected" and "invalid_payload" in rows.rows[0].error


def test_rate_limited_burst_becomes_one_digest(tmp_path, receiver):
    clock = ManualClock()
    rec = receiver()
    slack = Destination(name="chat", kind="slack", url=rec.url, rate_per_minute=60)
    router, rows = make_router(tmp_path, [slack], clock=clock)
    router.commit([make_alert(0)])
    wait_for(lambda: len(rec.requests) == 1, 10, what="first message")
    burst = [make_alert(i) for i in range(1, 31)]
    router.commit(burst)
    assert router.wait_idle(10)
    router.stop()
    assert len(rec.requests) == 2  # one alone, then the 30 as one digest: none dropped
    digest = rec.requests[1].json()
    assert digest["text"].startswith("30 dataward alerts")
    listed = "\n".join(b["text"]["text"] for b in digest["blocks"] if b["type"] == "section")
    assert all(a.uid in listed for a in burst)
    assert rec.requests[1].at >= rec.requests[0].at  # after the first, as the limit allows
    assert sum(1 for r in rows.rows if r.digest_size == 30 and r.status == "delivered") == 30


def test_drills_are_recorded_but_never_sent(tmp_path, receiver):
    rec = receiver()
    router, rows = make_router(tmp_path, [webhook(rec.url)])
    router.commit([make_alert(1, drill=True), make_alert(2)])
    assert router.wait_idle(10)
    router.stop()
    assert [r.headers["webhook-id"] for r in rec.requests] == [f"{make_alert(2).uid}_v1"]
    drill_rows = [r for r in rows.rows if r.alert_uid == make_alert(1).uid]
    assert [(r.status, r.http_status) for r in drill_rows] == [("skipped_drill", None)]


def test_subscribers_all_run_after_the_outbox_write_even_if_one_fails(tmp_path):
    router, _ = make_router(tmp_path, [webhook("http://127.0.0.1:9/never")])
    seen = []

    def broken(alert):
        raise RuntimeError("subscriber bug")

    router.subscribe(broken)
    router.subscribe(lambda a: seen.append((a.uid, router.outbox.lanes["oncall"].pending >= 1)))
    alerts = [make_alert(1), make_alert(2)]
    router.commit(alerts)
    router.publish(alerts)
    router.stop(grace_s=0)
    assert seen == [(alerts[0].uid, True), (alerts[1].uid, True)]
    assert router.counters["subscriber_errors"] == 2
