"""Kafka topic names. Tests and multi-tenant deployments set a prefix; production uses none."""
from __future__ import annotations

import msgspec


class Topics(msgspec.Struct, frozen=True):
    events: str = "dw.events"
    alerts: str = "dw.alerts"
    deadletter: str = "dw.deadletter"
    heartbeats: str = "dw.heartbeats"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        if not prefix:
            return cls()
        return cls(
            events=f"{prefix}dw.events",
            alerts=f"{prefix}dw.alerts",
            deadletter=f"{prefix}dw.deadletter",
            heartbeats=f"{prefix}dw.heartbeats",
        )
