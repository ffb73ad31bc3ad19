"""The read side of the forensic store: read-only, parameterised SQL over dataward's tables.

Every read runs with ``readonly=1`` (set last, so nothing in the request can lift it) and takes
values only through ClickHouse's ``{name:Type}`` placeholders. Settings a caller passes are
filtered through an allowlist of limits and output shape. The write side is ``store_writer``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import msgspec

from dwcore.logfmt import kv
from dwcore.sinks.chbackend import Backend
from dwcore.sinks.errors import StoreError

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
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


class StoreReader:
    """Read-only queries against one backend. Does not own the backend (``Store`` closes it)."""

    def __init__(self, backend: Backend, database: str, label: str, is_closed: Any = lambda: False) -> None:
        self._backend = backend
        self.database = database
        self.label = label
        self._is_closed = is_closed

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, str] | None = None,
        *,
        vetted: bool = False,
    ) -> QueryResult:
        """Rows of a read-only query. ``{name:Type}`` placeholders take values from parameters.
        ``vetted``: only a plain SELECT over this database (for SQL from a person)."""
        if trailing_format(sql):
            raise StoreError("query() returns rows; drop the FORMAT clause or use query_bytes()")
        body = self.query_bytes(
            sql,
            "JSONCompact",
            parameters,
            settings=settings,
            _internal={"output_format_json_quote_64bit_integers": "0"},
            vetted=vetted,
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
        limits: Mapping[str, str] | None = None,
        vetted: bool = False,
        tag: str | None = None,
    ) -> bytes:
        """Raw output in a ClickHouse format (a trailing ``FORMAT X`` in the SQL wins).

        ``parameters`` are Python values; ``text_params`` are already in ClickHouse's escaped text
        form (the HTTP endpoint's ``param_x``). Settings outside the allowlist are dropped;
        ``limits`` (time, memory, rows, bytes) are applied after them and win. ``vetted``: run only
        a plain SELECT over this database, as the engine's own parser decides (``sql_guard``).
        ``tag``: a label that cancel() finds the running query by.
        """
        if self._is_closed():
            raise StoreError("store is closed")
        if not IDENT.match(fmt):
            raise StoreError(f"invalid format name {fmt!r}")
        params = {name: param_text(value) for name, value in (parameters or {}).items()}
        params.update(text_params or {})
        allowed = {k: str(v) for k, v in (settings or {}).items() if k in READ_SETTINGS_ALLOWLIST}
        dropped = set(settings or {}) - set(allowed)
        if dropped:
            log.debug("settings_ignored %s", kv(names=",".join(sorted(dropped))))
        allowed.update(_internal or {})
        allowed.update({k: str(v) for k, v in (limits or {}).items()})
        db = database if database and IDENT.match(database) else self.database
        return self._backend.read(
            sql, fmt, params, allowed, db, vet_database=self.database if vetted else None, tag=tag
        )

    def cancel(self, tag: str) -> None:
        """Stop the running read labelled ``tag`` (its client went away)."""
        self._backend.cancel(tag)
