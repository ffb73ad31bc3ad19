"""What the embedded pipeline hands its backup (dataward/backup_embedded.py implements it)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent


class BackupHook(Protocol):
    """The backup controller's two inputs: alerts (halt) and the events that passed detection."""

    def on_alert(self, alert: Alert) -> object: ...
    def on_events(self, events: Sequence[AccessEvent]) -> None: ...
