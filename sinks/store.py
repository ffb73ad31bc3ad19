"""Store: the forensic history in ClickHouse (embedded chDB or a server), behind a thin adapter.

Writes are column-oriented (one Python list per column, types given up front): per-row Python is
what limits throughput, so rows are pivoted once with ``zip`` and never touched again. Reads are
always ``readonly=1`` and parameterised with ClickHouse's ``{name:Type}`` placeholders.
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC
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
from dwcore.sinks.chbackend import Backend, open_backend, redact_dsn
from dwcore.sinks.errors import StoreError, StoreFailure, StoreUnavailable

__all__ = [
    "READ_SETTINGS_ALLOWLIST",
    "QueryResult",
    "Store",
    "StoreError",
    "StoreFailure",
    "StoreUnavailable",
    "trailing_format",
]

log = logging.getLogger(__name__)

# Settings a reader may pass (URL params of the endpoint, CLI): limits and output shape only.
# Anything else is ignored, so no request can lift readonly or reach the file system.
READ_SETTINGS_ALLOWLIST = frozenset(
    {
        "max_result_rows",
        "max_result_bytes",
        "result_overflow_mode",
        "max_execution_time",
        "max_rows_to_read",
        "max_bytes_to_read",
        "read_overflow_mode",
        "max_block_size",
        "max_threads",
        "output_format_json_quote_64bit_integers",
        "output_format_json_quote_denormals",
        "output_format_json_named_tuples_as_objects",
        "output_format_decimal_trailing_zeros",
        "date_time_output_format",
        "join_use_nulls",
        "extremes",
    }
)

_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class QueryResult(msgspec.Struct, frozen=True):
    """Rows as JSON values (numbers, strings, lists, None): the same on every path, direct chDB,
    the query endpoint or a server. DateTime64 comes back as 'YYYY-MM-DD hh:mm:ss.mmm' UTC."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


class _Meta(msgspec.Struct):
    name: str
    type: str


class _JsonCompact(msgspec.Struct):
    meta: list[_Meta]
    data: list[list[Any]]


_json_compact = msgspec.json.Decoder(_JsonCompact)


def parse_json_compact(body: bytes) -> QueryResult:
    doc = _json_compact.decode(body)
    return QueryResult(
        columns=[m.name for m in doc.meta], types=[m.type for m in doc.meta], rows=doc.data
    )


def trailing_format(sql: str) -> str | None:
    """The format named by a trailing ``FORMAT X`` clause, if any."""
    found = _TRAILING_FORMAT.search(sql)
    return found.group(1) if found else None


def param_text(value: Any) -> str:
    """A Python value in ClickHouse's escaped-text form, as the server expects ``param_x``."""
    from clickhouse_connect.driver.binding import format_bind_value

    return str(format_bind_value(value, UTC, True))


@cache
def _types(columns: tuple[tuple[str, str], ...]) -> tuple[Any, ...]:
    from clickhouse_connect.datatypes.registry import get_from_name

    return tuple(get_from_name(type_name) for _, type_name in columns)


def _pivot(items: Sequence[msgspec.Struct], columns: tuple[tuple[str, str], ...]) -> list[Sequence[Any]]:
    names = tuple(name for name, _ in columns)
    fields = type(items[0]).__struct_fields__
    if names == fields:
        # Fast path: struct field order equals column order; astuple and zip run in C.
        return list(zip(*map(msgspec.structs.astuple, items), strict=True))
    return [[getattr(item, name) for item in items] for name in names]


class Store:
    def __init__(self, backend: Backend, database: str, retention_days: int, label: str) -> None:
        if not _IDENT.match(database):
            raise StoreError(f"database name must be letters, digits and _: {database!r}")
        self._backend = backend
        self.database = database
        self.retention_days = retention_days
        self.label = label  # the DSN without password
        self.embedded = label.startswith("chdb://")
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, dsn: str, database: str = "dataward", retention_days: int = 400) -> Store:
        backend = open_backend(dsn)
        store = cls(backend, database, retention_days, redact_dsn(dsn))
        log.info("store_opened store=%s database=%s", store.label, database)
        return store

    def ensure_schema(self) -> None:
        for statement in ddl_statements(self.database, self.retention_days):
            self._backend.command(statement)

    # -- writes ---------------------------------------------------------------------------

    def _insert(
        self,
        table: str,
        columns: tuple[tuple[str, str], ...],
        items: Sequence[msgspec.Struct],
        dedup_token: str | None,
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
        return self._insert(EVENTS_TABLE, EVENT_COLUMNS, events, dedup_token)

    def insert_alerts(self, alerts: Sequence[Alert], dedup_token: str | None = None) -> int:
        return self._insert(ALERTS_TABLE, ALERT_COLUMNS, alerts, dedup_token)

    def insert_deadletters(self, items: Sequence[DeadLetter], dedup_token: str | None = None) -> int:
        return self._insert(DEADLETTER_TABLE, DEADLETTER_COLUMNS, items, dedup_token)

    # -- reads ----------------------------------------------------------------------------

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> QueryResult:
        """Rows of a read-only query. ``{name:Type}`` placeholders take values from parameters."""
        if trailing_format(sql):
            raise StoreError("query() returns rows; drop the FORMAT clause or use query_bytes()")
        body = self.query_bytes(
            sql,
            "JSONCompact",
            parameters,
            settings=settings,
            _internal={"output_format_json_quote_64bit_integers": "0"},
        )
        try:
            return parse_json_compact(body)
        except msgspec.DecodeError as exc:
            raise StoreError(f"unexpected query output: {exc}") from None

    def query_bytes(
        self,
        sql: str,
        fmt: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        text_params: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
        database: str | None = None,
        _internal: Mapping[str, str] | None = None,
    ) -> bytes:
        """Raw output in a ClickHouse format (a trailing ``FORMAT X`` in the SQL wins).

        ``parameters`` are Python values; ``text_params`` are already in ClickHouse's escaped text
        form (the HTTP endpoint's ``param_x``). Settings outside the allowlist are dropped.
        """
        if self._closed:
            raise StoreError("store is closed")
        if not _IDENT.match(fmt):
            raise StoreError(f"invalid format name {fmt!r}")
        params = {name: param_text(value) for name, value in (parameters or {}).items()}
        params.update(text_params or {})
        allowed = {k: str(v) for k, v in (settings or {}).items() if k in READ_SETTINGS_ALLOWLIST}
        dropped = set(settings or {}) - set(allowed)
        if dropped:
            log.debug("settings_ignored names=%s", ",".join(sorted(dropped)))
        allowed.update(_internal or {})
        db = database if database and _IDENT.match(database) else self.database
        return self._backend.read(sql, fmt, params, allowed, db)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._backend.close()
        log.info("store_closed store=%s", self.label)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
