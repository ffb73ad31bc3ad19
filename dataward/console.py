"""How an alert looks on the terminal of someone running `dataward run`."""
from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from dwcore.schemas.alert import Alert

_console = Console(stderr=True, highlight=False)
_STYLE = {"low": "cyan", "medium": "yellow", "high": "bold red", "critical": "bold white on red"}


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def print_alert(alert: Alert) -> None:
    style = _STYLE.get(alert.severity, "bold")
    _console.print(
        f"[{style}] {alert.severity.upper()} [/{style}] {alert.title}\n"
        f"    rule={alert.rule} user={alert.user} files={alert.file_count} "
        f"first_seen={_ts(alert.first_seen)} detected_at={_ts(alert.detected_at)} UTC\n"
        f"    {alert.description}"
    )
