"""Alert payloads exactly as each service documents them.

- webhook: Standard Webhooks JSON ``{type, timestamp, data}``; ``data`` is the alert as stored
  (OCSF Detection Finding fields). Signed at send time (see signing.py).
- slack: an incoming-webhook message, ``text`` (notifications, fallback) + ``blocks``.
- teams: a Workflows ("When a Teams webhook request is received") message with one Adaptive Card.
- pagerduty: Events API v2, ``trigger`` with ``dedup_key`` = incident uid, or ``resolve`` when the
  incident was resolved.
A digest groups several alerts into one request when a destination's rate limit would otherwise
hold them back; every kind has one.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from dwcore.schemas.alert import Alert, Severity
from dwcore.sinks.alert_cards import slack_digest, slack_message, teams_digest, teams_message
from dwcore.sinks.alert_text import counts_line, evidence_query, iso, visible

KINDS = ("webhook", "slack", "teams", "pagerduty")
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# Events API v2 knows critical, error, warning, info.
PAGERDUTY_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
TEST_TAG = "dataward.test"

_encoder = msgspec.json.Encoder()


class Rendered(msgspec.Struct, frozen=True):
    msg_id: str  # webhook-id; stable for the same alert version(s), so receivers can dedupe
    body: bytes
    content_type: str = "application/json"


def message_id(alert: Alert) -> str:
    """One id per alert version: ``<uid>_v<version>``."""
    return f"{alert.uid}_v{alert.version}"


def digest_id(alerts: Sequence[Alert]) -> str:
    joined = "\n".join(sorted(message_id(a) for a in alerts))
    return "digest_" + hashlib.sha256(joined.encode()).hexdigest()[:32]


def is_test(alert: Alert) -> bool:
    return TEST_TAG in alert.tags


def event_type(alert: Alert) -> str:
    if is_test(alert):
        return "dataward.alert.test"
    return {"resolved": "dataward.alert.resolved", "closed": "dataward.alert.closed"}.get(
        alert.status, "dataward.alert"
    )


def highest(alerts: Sequence[Alert]) -> Severity:
    return max((a.severity for a in alerts), key=lambda s: Severity(s).rank)


def _webhook(alert: Alert, now_ms: int) -> bytes:
    doc = {"type": event_type(alert), "timestamp": iso(now_ms), "test": is_test(alert),
           "data": msgspec.to_builtins(alert)}
    return _encoder.encode(doc)


def _webhook_digest(alerts: Sequence[Alert], now_ms: int) -> bytes:
    doc = {
        "type": "dataward.alert.digest",
        "timestamp": iso(now_ms),
        "test": all(is_test(a) for a in alerts),
        "data": {"count": len(alerts), "highest_severity": str(highest(alerts)),
                 "alerts": [msgspec.to_builtins(a) for a in alerts]},
    }
    return _encoder.encode(doc)


def _pd_details(alert: Alert) -> dict[str, object]:
    return {
        "rule": alert.rule,
        "user": alert.user,
        "severity": str(alert.severity),
        "counts": counts_line(alert),
        "file_count": alert.file_count,
        "sample_paths": [visible(p, 300) for p in alert.paths[:10]],
        "devices": alert.devices,
        "shares": alert.shares,
        "tags": alert.tags,
        "description": visible(alert.description, 2000),
        "evidence_query": evidence_query(alert),
        "incident_uid": alert.uid,
        "version": alert.version,
        "status": alert.status,
        "first_seen": iso(alert.first_seen),
        "test": is_test(alert),
    }


def _pagerduty(alert: Alert, routing_key: str) -> bytes:
    if alert.status == "resolved":
        return _encoder.encode({"routing_key": routing_key, "event_action": "resolve", "dedup_key": alert.uid})
    summary = visible(f"{'[TEST] ' if is_test(alert) else ''}{alert.title}", 1024)
    doc = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.uid,
        "client": "dataward",
        "payload": {
            "summary": summary,
            "source": visible(alert.devices[0] if alert.devices else "dataward", 255),
            "severity": PAGERDUTY_SEVERITY[alert.severity],
            "timestamp": iso(alert.detected_at),
            "component": visible(alert.shares[0], 255) if alert.shares else "",
            "group": visible(alert.user, 255),
            "class": alert.rule,
            "custom_details": _pd_details(alert),
        },
    }
    return _encoder.encode(doc)


def _pagerduty_digest(alerts: Sequence[Alert], routing_key: str, msg_id: str) -> bytes:
    top = highest(alerts)
    summary = visible(f"{len(alerts)} dataward alerts (digest), highest {top}: "
                      + "; ".join(a.title for a in alerts[:5]), 1024)
    doc = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": msg_id,
        "client": "dataward",
        "payload": {
            "summary": summary,
            "source": "dataward",
            "severity": PAGERDUTY_SEVERITY[top],
            "timestamp": iso(max(a.detected_at for a in alerts)),
            "class": "digest",
            "custom_details": {
                "count": len(alerts),
                "alerts": [{"incident_uid": a.uid, "version": a.version, "severity": str(a.severity),
                            "status": a.status, "title": visible(a.title, 300), "user": a.user}
                           for a in alerts],
            },
        },
    }
    return _encoder.encode(doc)


def render(kind: str, alerts: Sequence[Alert], now_ms: int, routing_key: str = "") -> Rendered:
    """One request for one alert, or a digest for several."""
    if not alerts:
        raise ValueError("nothing to render")
    if len(alerts) == 1:
        alert = alerts[0]
        msg_id = message_id(alert)
        if kind == "webhook":
            body = _webhook(alert, now_ms)
        elif kind == "slack":
            body = _encoder.encode(slack_message(alert, is_test(alert)))
        elif kind == "teams":
            body = _encoder.encode(teams_message(alert, is_test(alert)))
        elif kind == "pagerduty":
            body = _pagerduty(alert, routing_key)
        else:
            raise ValueError(f"unknown destination kind {kind!r}")
        return Rendered(msg_id, body)
    msg_id = digest_id(alerts)
    if kind == "webhook":
        body = _webhook_digest(alerts, now_ms)
    elif kind == "slack":
        body = _encoder.encode(slack_digest(alerts))
    elif kind == "teams":
        body = _encoder.encode(teams_digest(alerts))
    elif kind == "pagerduty":
        body = _pagerduty_digest(alerts, routing_key, msg_id)
    else:
        raise ValueError(f"unknown destination kind {kind!r}")
    return Rendered(msg_id, body)


def can_digest(kind: str, alert: Alert) -> bool:
    """A PagerDuty resolve must reach its own dedup_key, so it never travels inside a digest."""
    return not (kind == "pagerduty" and alert.status == "resolved")


def sample_alert(now_ms: int, severity: str = "low") -> Alert:
    """What `dataward alerts test` sends: a clearly marked test, never mistaken for an attack."""
    import uuid

    sev = Severity(severity)
    return Alert(
        uid=f"test-{uuid.uuid4()}",
        title="[TEST] dataward test alert: delivery works",
        rule="delivery_test",
        rule_uid="00000000-0000-0000-0000-000000000000",
        severity=sev,
        severity_id=sev.ocsf_id,
        user="dataward-test",
        first_seen=now_ms,
        detected_at=now_ms,
        signal="test messages",
        observed=1,
        threshold=1,
        window_s=1,
        file_count=0,
        paths=["/nothing/happened/this-is-a-test.txt"],
        devices=["dataward"],
        tags=[TEST_TAG],
        description="This is a test sent by `dataward alerts test`. No files were touched; "
                    "no action is needed.",
        last_seen=now_ms,
    )
