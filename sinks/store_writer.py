"""The write side of the forensic store: schema, and columnar inserts of events, alerts, dead letters.

Writes are column-oriented (one Python list per column, types given up front): per-row Python is
what limits throughput, so rows are pivoted once with ``zip`` and never touched again. An insert
may carry a dedup token (``topic:partition:first-last``) so that a replay is dropped by the engine.
The read side is ``store_reader``.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import msgspec

from dwcore.schemas.alert import Alert
from dwcore.schemas.ddl import (
    ALERT_COLUMNS,
    ALERTS_TABLE,
    DEADLETTER_COLUMNS,
    DEADLETTER_TABLE,
    EVENT_COLUMNS,
    EVENTS_TABLE,
    ddl_statements,
)
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.event import AccessEvent
from dwcore.sinks.chbackend import Backend

Columns = tuple[tuple[str, str], ...]


@cache
def _types(columns: Columns) -> tuple[Any, ...]:
    from clickhouse_connect.datatypes.registry import get_from_name

    return tuple(get_from_name(type_name) for _, type_name in columns)


def _pivot(items: Sequence[msgspec.Struct], columns: Columns) -> list[Sequence[Any]]:
    names = tuple(name for name, _ in columns)
    fields = type(items[0]).__struct_fields__
    if names == fields:
        # Fast path: struct field order equals column order; astuple and zip run in C.
        return list(zip(*map(msgspec.structs.astuple, items), strict=True))
    return [[getattr(item, name) for item in items] for name in names]


class StoreWriter:
    """Inserts into one backend. Does not own the backend (``Store`` closes it)."""

    def __init__(self, backend: Backend, database: str, retention_days: int, label: str) -> None:
        self._backend = backend
        self.database = database
        self.retention_days = retention_days
        self.label = label

    def ensure_schema(self) -> None:
        for statement in ddl_statements(self.database, self.retention_days):
            self._backend.command(statement)

    def insert(
        self, table: str, columns: Columns, items: Sequence[msgspec.Struct], dedup_token: str | None = None
    ) -> int:
        if not items:
            return 0
        settings = {"insert_deduplication_token": dedup_token} if dedup_token else {}
        data = _pivot(items, columns)
        self._backend.insert(
            f"`{self.database}`.`{table}`",
            [name for name, _ in columns],
            _types(columns),
            data,
            settings,
        )
        return len(items)

    def insert_events(self, events: Sequence[AccessEvent], dedup_token: str | None = None) -> int:
        return self.insert(EVENTS_TABLE, EVENT_COLUMNS, events, dedup_token)

    def insert_alerts(self, alerts: Sequence[Alert], dedup_token: str | None = None) -> int:
        return self.insert(ALERTS_TABLE, ALERT_COLUMNS, alerts, dedup_token)

    def insert_deadletters(self, items: Sequence[DeadLetter], dedup_token: str | None = None) -> int:
        return self.insert(DEADLETTER_TABLE, DEADLETTER_COLUMNS, items, dedup_token)
