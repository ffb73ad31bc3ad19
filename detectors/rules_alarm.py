"""agent_alarm: the agent reports trouble with itself (e.g. queue_overflow: events were lost).

One incident per (device, alarm): a flapping alarm on one server is one alert until it has been
quiet for cooldown_s, while the same alarm on another server is a separate incident (and neither
joins the user's activity incident: the "user" of an alarm is the agent).
"""
from __future__ import annotations

from dwcore.detectors.features import Facts
from dwcore.detectors.spec import RuleSpec
from dwcore.schemas.event import AccessEvent

SEP = "\x1f"


def key(ev: AccessEvent, facts: Facts) -> str | None:
    return f"alarm{SEP}{ev.device}{SEP}{ev.alarm}" if ev.alarm else None


def describe(ev: AccessEvent) -> str:
    return f'The agent on {ev.device} raised {ev.alarm}: "{ev.message or ""}".'


SPECS = (RuleSpec("agent_alarm", "alarms", key, describe),)
