"""Alert fields made safe and short for chat tools, and the query that shows the evidence.

Paths, user names and descriptions come from file servers, where an attacker names the files:
control characters, mention syntax (``<!channel>``), links (``[x](http://..)``) and code-fence
breakers must arrive as inert text in Slack and Teams.
"""
from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

from dwcore.schemas.alert import Alert

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_TEAMS_MD = re.compile(r"([\\*_\[\]()`~<>])")
MAX_PATHS = 10


def visible(text: str, limit: int = 500) -> str:
    """Control and bidi characters shown as ``\\xNN``/``\\uNNNN``; cut to ``limit`` with an ellipsis."""
    out = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def slack_escape(text: str, limit: int = 500) -> str:
    # Slack's three control characters; with them escaped no mention, channel ping or link survives.
    return visible(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_code(text: str, limit: int = 500) -> str:
    """Text for inside a ``` block: a backtick could close the fence, so it becomes a look-alike."""
    return slack_escape(text, limit).replace("`", "ˋ")


def teams_escape(text: str, limit: int = 500) -> str:
    # Adaptive Card TextBlocks render a markdown subset and {{DATE()}} functions: neutralise both.
    return _TEAMS_MD.sub(r"\\\1", visible(text, limit)).replace("{{", "{\u200b{")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hhmmss(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def evidence_query(alert: Alert) -> str:
    """A `dataward query` command line listing the user's events in the incident's time span.
    Values travel as parameters (never spliced into SQL) and are shell-quoted."""
    last = max(alert.last_seen, alert.detected_at)
    sql = (
        "SELECT time, device, activity_name, file_path, file_new_path FROM events "
        "WHERE user_name = {user:String} AND time BETWEEN fromUnixTimestamp64Milli({t0:Int64}) "
        "AND fromUnixTimestamp64Milli({t1:Int64}) ORDER BY time"
    )
    return (
        f"dataward query -p {shlex.quote('user=' + alert.user)} -p t0={alert.first_seen} -p t1={last} "
        f"{shlex.quote(sql)}"
    )


def counts_line(alert: Alert) -> str:
    return (f"{alert.observed:g} {alert.signal} in {alert.window_s:g} s (threshold {alert.threshold:g}); "
            f"{alert.file_count} files")


def status_word(alert: Alert) -> str:
    return {"resolved": "RESOLVED", "closed": "closed"}.get(alert.status, "")
