"""agent_alarm: the agent reports trouble with itself (e.g. queue_overflow: events were lost).

One incident per (device, alarm): a flapping alarm on one server is one alert until it has been
quiet for cooldown_s, while the same alarm on another server is a separate incident.
"""
from __future__ import annotations

from dwcore.detectors import explain
from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.spec import RuleSpec
from dwcore.detectors.state import Incident, Item
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent

NAME = "agent_alarm"
SIGNAL = "alarms"
_SEP = "\x1f"


def key(ev: AccessEvent) -> str | None:
    return f"{ev.device}{_SEP}{ev.alarm}" if ev.alarm else None


def item(ev: AccessEvent) -> Item:
    return Item(time=ev.time, path=ev.file_path, device=ev.device, share=ev.share, note=ev.message or "")


def alert(inc: Incident, rule: RulePolicy, user: str, key: str) -> Alert:
    device, _, alarm = key.partition(_SEP)
    title = f"{rule.title} {alarm} on {device}"
    note = f' The agent said: "{inc.note}".' if inc.note else ""
    if inc.first_seen == inc.last_seen:
        when = f"at {explain.iso(inc.first_seen)}"
    else:
        when = f"between {explain.iso(inc.first_seen)} and {explain.iso(inc.last_seen)}"
    description = (
        f"The agent on {device} raised {alarm} {explain.plural(inc.count, 'time')} {when} "
        f"(event user {user}; threshold {rule.threshold} in {explain.seconds(rule.window_s)}).{note} "
        f"Affected: {', '.join(inc.paths[:explain.PATHS_IN_TEXT])}. Activity there may be missing "
        f"from the record and from detection."
    )
    return explain.build_alert(inc, rule, user, SIGNAL, title, " ".join(description.split()))


SPEC = RuleSpec(NAME, key, item, alert)
