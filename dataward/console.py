"""How an alert looks on the terminal of someone running `dataward run`."""
from __future__ import annotations

import re
from datetime import UTC, datetime

from rich.console import Console
from rich.text import Text

from dwcore.schemas.alert import Alert

_console = Console(stderr=True, highlight=False)
_STYLE = {"low": "cyan", "medium": "yellow", "high": "bold red", "critical": "bold white on red"}


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def alert_text(alert: Alert) -> Text:
    """The alert as rich Text. Title, user and description carry file names, user names and paths
    an attacker chose: they go in through ``inert`` as plain text, never as markup."""
    style = _STYLE.get(alert.severity, "bold")
    text = Text()
    if alert.drill:  # a self-test: shown so the admin sees it work, never paged
        text.append(" DRILL ", style="bold black on cyan")
        text.append(" ")
    text.append(f" {inert(alert.severity.upper())} ", style=style)
    text.append(" " + inert(alert.title) + "\n")
    text.append(
        f"    rule={inert(alert.rule)} user={inert(alert.user)} files={alert.file_count} "
        f"first_seen={_ts(alert.first_seen)} detected_at={_ts(alert.detected_at)} UTC\n"
    )
    text.append("    " + inert(alert.description))
    return text


def print_alert(alert: Alert, console: Console | None = None) -> None:
    (console or _console).print(alert_text(alert), highlight=False)


# Characters that must never reach a terminal raw: C0/C1 controls and DEL (escape sequences, OSC 8
# links, clear-screen), zero-width and bidirectional controls (a name that reads differently than it
# is), line and paragraph separators; and the backslash, doubled so the escaped form is unambiguous.
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(found: re.Match[str]) -> str:
    ch = found.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(value: object) -> str:
    """Any event-derived value as text that is safe to show a person: control, zero-width and bidi
    characters visibly escaped (\\n, \\x1b, \\u202e), backslashes doubled. Show the result as
    plain text (rich ``Text``), never as markup, so ``[link=...]`` in a file name stays literal."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape_char, text)


def inert_text(value: object, style: str = "") -> Text:
    """``inert`` as a rich Text: printed literally, markup in the value is not interpreted."""
    return Text(inert(value), style=style)
