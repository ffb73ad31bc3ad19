"""Chat messages: Slack Block Kit and Teams Adaptive Cards, for one alert or a digest.

Limits kept (Slack: header 150 chars, section text 3000, 10 fields, 50 blocks; Teams: a card
well under the 28 KB message limit): long values are cut, never rejected.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dwcore.schemas.alert import Alert
from dwcore.sinks.alert_text import (
    MAX_PATHS,
    counts_line,
    evidence_query,
    hhmmss,
    slack_code,
    slack_escape,
    status_word,
    teams_escape,
    visible,
)

_EMOJI = {"critical": ":red_circle:", "high": ":large_orange_circle:", "medium": ":large_yellow_circle:",
          "low": ":white_circle:"}
_TEAMS_COLOR = {"critical": "Attention", "high": "Attention", "medium": "Warning", "low": "Default"}
DIGEST_LINES = 40


def _headline(alert: Alert, test: bool) -> str:
    status = status_word(alert)
    prefix = "[TEST] " if test else ""
    return f"{prefix}{alert.severity.upper()}{f' ({status})' if status else ''}: {alert.title}"


def slack_message(alert: Alert, test: bool) -> dict[str, Any]:
    paths = "\n".join(slack_code(p, 300) for p in alert.paths[:MAX_PATHS]) or "(none)"
    fields = [
        ("Severity", str(alert.severity)),
        ("User", alert.user),
        ("Rule", alert.rule),
        ("Files", str(alert.file_count)),
        ("Devices", ", ".join(alert.devices[:5]) or "-"),
        ("Counts", counts_line(alert)),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": visible(_headline(alert, test), 150),
                                    "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{slack_escape(v, 300)}"}
                                       for k, v in fields]},
    ]
    if alert.description:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(alert.description, 2900)}})
    blocks += [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Sample paths*\n```{paths}```"[:3000]}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": f"*Evidence*\n```{slack_code(evidence_query(alert), 2800)}```"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(
            f"incident {alert.uid} v{alert.version} · {alert.status} · first seen {hhmmss(alert.first_seen)}"
            f" · detected {hhmmss(alert.detected_at)}", 300)}]},
    ]
    text = f"{_EMOJI.get(alert.severity, '')} {slack_escape(_headline(alert, test), 300)} " \
           f"(user {slack_escape(alert.user, 100)}, {alert.file_count} files)"
    return {"text": text.strip(), "blocks": blocks}


def _digest_line(alert: Alert) -> str:
    status = status_word(alert)
    return (f"{alert.severity.upper()}{f' ({status})' if status else ''} {alert.rule} "
            f"user={alert.user} files={alert.file_count} incident={alert.uid} v{alert.version}")


def slack_digest(alerts: Sequence[Alert]) -> dict[str, Any]:
    lines = [slack_escape(_digest_line(a), 280) for a in alerts[:DIGEST_LINES]]
    if len(alerts) > DIGEST_LINES:
        lines.append(f"... and {len(alerts) - DIGEST_LINES} more (see the alerts table)")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{len(alerts)} dataward alerts (digest)"}},
    ]
    chunk: list[str] = []
    for line in lines:
        if sum(len(x) + 3 for x in chunk) + len(line) > 2900:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(chunk)}})
            chunk = []
        chunk.append(f"• {line}")
    if chunk:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(chunk)}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text":
                   "Grouped into one message by this destination's rate limit; every alert is in the "
                   "`alerts` table."}]})
    top = max(alerts, key=lambda a: a.severity_id)
    text = f"{len(alerts)} dataward alerts, highest {top.severity}: {slack_escape(top.title, 200)}"
    return {"text": text, "blocks": blocks}


def _card(body: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": {"width": "Full"},
                "body": body,
            },
        }],
    }


def teams_message(alert: Alert, test: bool) -> dict[str, Any]:
    facts = [
        ("Severity", str(alert.severity)),
        ("User", alert.user),
        ("Rule", alert.rule),
        ("Files", str(alert.file_count)),
        ("Devices", ", ".join(alert.devices[:5]) or "-"),
        ("Counts", counts_line(alert)),
        ("Incident", f"{alert.uid} v{alert.version} ({alert.status})"),
        ("First seen", hhmmss(alert.first_seen)),
    ]
    paths = "\n\n".join(teams_escape(p, 300) for p in alert.paths[:MAX_PATHS]) or "(none)"
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": teams_escape(_headline(alert, test), 300), "weight": "Bolder",
         "size": "Medium", "wrap": True, "color": _TEAMS_COLOR.get(alert.severity, "Default")},
        {"type": "FactSet", "facts": [{"title": k, "value": teams_escape(v, 300)} for k, v in facts]},
    ]
    if alert.description:
        body.append({"type": "TextBlock", "text": teams_escape(alert.description, 2000), "wrap": True})
    body += [
        {"type": "TextBlock", "text": "Sample paths", "weight": "Bolder", "wrap": True},
        {"type": "TextBlock", "text": paths, "wrap": True, "fontType": "Monospace"},
        {"type": "TextBlock", "text": "Evidence", "weight": "Bolder", "wrap": True},
        {"type": "TextBlock", "text": teams_escape(evidence_query(alert), 2000), "wrap": True,
         "fontType": "Monospace", "isSubtle": True},
    ]
    return _card(body)


def teams_digest(alerts: Sequence[Alert]) -> dict[str, Any]:
    lines = [f"- {teams_escape(_digest_line(a), 280)}" for a in alerts[:DIGEST_LINES]]
    if len(alerts) > DIGEST_LINES:
        lines.append(f"- ... and {len(alerts) - DIGEST_LINES} more (see the alerts table)")
    return _card([
        {"type": "TextBlock", "text": f"{len(alerts)} dataward alerts (digest)", "weight": "Bolder",
         "size": "Medium", "wrap": True, "color": "Attention"},
        {"type": "TextBlock", "text": "\n".join(lines), "wrap": True},
        {"type": "TextBlock", "text": "Grouped into one message by this destination's rate limit; every "
                                      "alert is in the alerts table.", "wrap": True, "isSubtle": True},
    ])
