"""Apply the schema migrations of ``schemas/migrations.py`` to a store, idempotently, at start.

Reads which versions ``schema_migrations`` records, runs the missing ones in order and records
each after its last statement. Then two steps that need no migration: columns of the mirrored
tables that a table lacks are added (a new Struct field), and each table's TTL is set to the
configured retention when it differs.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dwcore.logfmt import kv
from dwcore.schemas.ddl import (
    ALERT_COLUMNS,
    ALERTS_TABLE,
    DEADLETTER_COLUMNS,
    DEADLETTER_TABLE,
    DELIVERIES_TABLE,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    EVENTS_TABLE,
    MIGRATIONS_TABLE,
)
from dwcore.schemas.migrations import (
    MIGRATIONS,
    TTL_COLUMNS,
    Context,
    Migration,
    migrations_table_ddl,
    table_ttl_days,
)

log = logging.getLogger(__name__)

# Tables whose columns mirror a Struct: a field added at the end of the Struct becomes a column.
MIRRORED: dict[str, tuple[tuple[str, str], ...]] = {
    EVENTS_TABLE: EVENT_COLUMNS,
    ALERTS_TABLE: ALERT_COLUMNS,
    DEADLETTER_TABLE: DEADLETTER_COLUMNS,
    DELIVERIES_TABLE: DELIVERY_COLUMNS,
}

_TTL_DAYS = re.compile(r"\bTTL .*?(?:toIntervalDay\((\d+)\)|INTERVAL (\d+) DAY)", re.IGNORECASE)

Command = Callable[[str], None]
Rows = Callable[[str, Mapping[str, Any]], list[list[Any]]]


def apply_migrations(
    command: Command,
    rows: Rows,
    database: str,
    retention_days: int,
    ttl_overrides: Mapping[str, int] | None = None,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> list[int]:
    """Bring ``database`` up to the newest migration. Returns the versions applied now."""
    ctx = Context(database, table_ttl_days(retention_days, ttl_overrides))
    for statement in migrations_table_ddl(ctx):
        command(statement)
    done = {int(r[0]) for r in rows(f"SELECT version FROM {ctx.table(MIGRATIONS_TABLE)}", {})}  # noqa: S608
    applied: list[int] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        log.info("schema_migration_start %s", kv(version=migration.version, name=migration.name))
        for statement in migration.statements(ctx):
            command(statement)
        record = f"INSERT INTO {ctx.table(MIGRATIONS_TABLE)} (version, name, applied_at) VALUES "  # noqa: S608
        command(record + f"({int(migration.version)}, {_quote(migration.name)}, now64(3))")
        applied.append(migration.version)
        log.info("schema_migration_done %s", kv(version=migration.version))
    _add_missing_columns(command, rows, ctx)
    _sync_ttls(command, rows, ctx)
    return applied


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _add_missing_columns(command: Command, rows: Rows, ctx: Context) -> None:
    have: dict[str, set[str]] = {}
    for table, name in rows(
        "SELECT table, name FROM system.columns WHERE database = {db:String}", {"db": ctx.database}
    ):
        have.setdefault(table, set()).add(name)
    for table, cols in MIRRORED.items():
        for name, typ in cols:
            if name not in have.get(table, set()):
                log.info("schema_add_column %s", kv(table=table, column=name, type=typ))
                command(f"ALTER TABLE {ctx.table(table)} ADD COLUMN IF NOT EXISTS `{name}` {typ}")


def _sync_ttls(command: Command, rows: Rows, ctx: Context) -> None:
    engines = {
        table: engine_full
        for table, engine_full in rows(
            "SELECT name, engine_full FROM system.tables WHERE database = {db:String}", {"db": ctx.database}
        )
    }
    for table, column in TTL_COLUMNS.items():
        if table not in engines:
            continue
        want = ctx.ttl_days[table]
        found = _TTL_DAYS.search(engines[table])
        have = (found.group(1) or found.group(2)) if found else None
        if have is not None and int(have) == want:
            continue
        log.info("schema_ttl %s", kv(table=table, days=want, was=have or "none"))
        command(f"ALTER TABLE {ctx.table(table)} MODIFY {ctx.ttl(table, column)}")


def schema_version(rows: Rows, database: str) -> int:
    """The newest migration version recorded in ``database`` (0 when none)."""
    ctx = Context(database, {})
    try:
        found = rows(f"SELECT max(version) FROM {ctx.table(MIGRATIONS_TABLE)}", {})  # noqa: S608
    except Exception:  # no migrations table yet
        return 0
    return int(found[0][0]) if found else 0
