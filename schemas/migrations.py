"""Versioned schema migrations: the forensic store's schema as a linear history.

Each migration is a version number, a name and the DDL it runs. ``sinks/migrate.py`` applies the
ones a store has not recorded in ``schema_migrations`` yet, in order, at start; every statement is
idempotent (IF NOT EXISTS), so a crash half-way or two processes starting at once are harmless.
Version 1 is the walking skeleton's schema, so an existing store upgrades in place.

To add a table or change one: append a ``Migration`` with the next version; never edit a landed one.
Columns of the mirrored tables (``schemas/ddl.py``) that a table lacks are added at start without a
migration, so a new Struct field needs only its column at the end of its tuple.

Per-table retention (TTL) is data, not a migration: ``table_ttl_days`` says how long each table
keeps rows and the store re-applies it at start when the configuration changed.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from dwcore.schemas.ddl import (
    ALERTS_TABLE,
    BACKUP_AUDIT_COLUMNS,
    BACKUP_AUDIT_TABLE,
    BACKUP_MANIFEST_COLUMNS,
    BACKUP_MANIFEST_TABLE,
    BACKUP_RUN_COLUMNS,
    BACKUP_RUNS_TABLE,
    CUSTODY_COLUMNS,
    CUSTODY_TABLE,
    DEADLETTER_TABLE,
    DELIVERIES_TABLE,
    DELIVERY_COLUMNS,
    EVENTS_BY_PATH_TABLE,
    EVENTS_TABLE,
    HEARTBEAT_COLUMNS,
    HEARTBEATS_TABLE,
    INCIDENT_ACTION_COLUMNS,
    INCIDENT_ACTIONS_TABLE,
    INVENTORY_COLUMNS,
    INVENTORY_TABLE,
    MIGRATIONS_TABLE,
    SOURCE_COLUMNS,
    USER_MINUTE_TABLE,
    ddl_statements,
)


class Context(NamedTuple):
    database: str
    ttl_days: Mapping[str, int]  # table -> days, from table_ttl_days

    def table(self, name: str) -> str:
        return f"`{self.database}`.`{name}`"

    def ttl(self, table: str, column: str) -> str:
        days = self.ttl_days.get(table)
        return f"TTL toDateTime({column}) + INTERVAL {int(days)} DAY DELETE" if days else ""


class Migration(NamedTuple):
    version: int
    name: str
    statements: Callable[[Context], list[str]]


# Tables whose rows expire, the column their TTL reads, and their default retention as a function
# of store.retention_days. Summaries outlive the raw rows they summarise; custody blocks and the
# migration log never expire (a chain with a hole cannot be verified).
TTL_COLUMNS: dict[str, str] = {
    EVENTS_TABLE: "time",
    EVENTS_BY_PATH_TABLE: "time",
    USER_MINUTE_TABLE: "minute",
    ALERTS_TABLE: "detected_at",
    DEADLETTER_TABLE: "time",
    DELIVERIES_TABLE: "time",
    INVENTORY_TABLE: "scanned_at",
    HEARTBEATS_TABLE: "time",
    BACKUP_RUNS_TABLE: "started_at",
}
HEARTBEAT_DAYS = 30
MAX_TTL_DAYS = 20_000  # toDateTime() overflows after 2106: a huge TTL would delete every new row


def table_ttl_days(retention_days: int, overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """Days each expiring table keeps its rows. ``overrides`` (store.ttl_days) wins per table."""
    base = int(retention_days)
    days = {
        EVENTS_TABLE: base,
        EVENTS_BY_PATH_TABLE: base,
        DEADLETTER_TABLE: base,
        INVENTORY_TABLE: base,
        DELIVERIES_TABLE: base,
        HEARTBEATS_TABLE: min(base, HEARTBEAT_DAYS),
        USER_MINUTE_TABLE: base * 3,
        ALERTS_TABLE: base * 3,
        BACKUP_RUNS_TABLE: base * 3,
    }
    for table, value in (overrides or {}).items():
        if table not in TTL_COLUMNS:
            raise ValueError(f"no retention for table {table!r}; tables that expire: {', '.join(TTL_COLUMNS)}")
        days[table] = int(value)
    for table, value in days.items():
        days[table] = min(value, MAX_TTL_DAYS)
        if value < 1:
            raise ValueError(f"retention of {table} must be at least 1 day, got {value}")
    return days


def _cols(cols: tuple[tuple[str, str], ...], codecs: Mapping[str, str] | None = None) -> str:
    codecs = codecs or {}
    return ",\n    ".join(
        f"`{name}` {typ}" + (f" CODEC({codecs[name]})" if name in codecs else "") for name, typ in cols
    )


_DEDUP = "non_replicated_deduplication_window = 1000"
_TIME_CODEC = "Delta, ZSTD(1)"
_TEXT_CODEC = "ZSTD(3)"
_UNSOURCED = "_src = ''"  # rows stored before replay positions existed


def _v1_skeleton(ctx: Context) -> list[str]:
    # The schema as the walking skeleton created it (its TTL is re-applied per table at start).
    return ddl_statements(ctx.database, ctx.ttl_days.get(EVENTS_TABLE, 400))


def _v2_forensics(ctx: Context) -> list[str]:
    """Replay positions and their index, codecs, the per-path sort order, the per-minute view,
    the other tables of the forensic history, custody blocks, and events linked to incidents."""
    ev, dl = ctx.table(EVENTS_TABLE), ctx.table(DEADLETTER_TABLE)
    by_path, minute = ctx.table(EVENTS_BY_PATH_TABLE), ctx.table(USER_MINUTE_TABLE)
    out: list[str] = []
    for table in (ev, dl):
        # _src/_offset say exactly which Kafka messages a table holds, so a replay after a crash
        # skips those already stored whatever its batch boundaries; the projection makes that
        # lookup a range read instead of a scan of the whole history.
        out += [
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS `_src` {SOURCE_COLUMNS[0][1]} DEFAULT ''",
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS `_offset` {SOURCE_COLUMNS[1][1]} DEFAULT 0 "
            f"CODEC({_TIME_CODEC})",
            f"ALTER TABLE {table} ADD PROJECTION IF NOT EXISTS by_source (SELECT _src, _offset ORDER BY _src, _offset)",
        ]
    out += [
        f"ALTER TABLE {ev} MODIFY COLUMN `time` DateTime64(3, 'UTC') CODEC({_TIME_CODEC})",
        f"ALTER TABLE {ev} MODIFY COLUMN `uid` String CODEC(ZSTD(1))",
        f"ALTER TABLE {ev} MODIFY COLUMN `file_path` String CODEC({_TEXT_CODEC})",
        f"ALTER TABLE {ev} MODIFY COLUMN `file_new_path` Nullable(String) CODEC({_TEXT_CODEC})",
        f"ALTER TABLE {dl} MODIFY COLUMN `raw` String CODEC({_TEXT_CODEC})",
        # Custody of a path or prefix: one row per path an event touched (a rename touches two),
        # sorted by path, so "everything that happened under /srv/train/" reads one key range.
        f"""CREATE TABLE IF NOT EXISTS {by_path} (
    `path` String CODEC({_TEXT_CODEC}),
    `time` DateTime64(3, 'UTC') CODEC({_TIME_CODEC}),
    `role` LowCardinality(String),
    `uid` String CODEC(ZSTD(1)),
    `user_name` LowCardinality(String),
    `device` LowCardinality(String),
    `share` LowCardinality(String),
    `activity_name` LowCardinality(String),
    `other_path` Nullable(String) CODEC({_TEXT_CODEC}),
    `client_ip` Nullable(String),
    `process_exe` LowCardinality(Nullable(String)),
    `bytes_written` Nullable(UInt64)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (path, time)
{ctx.ttl(EVENTS_BY_PATH_TABLE, "time")}
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {ctx.table(EVENTS_BY_PATH_TABLE + "_mv")} TO {by_path} AS
{_by_path_select(ev)}""",
        # One user's activity per minute: the timeline without scanning raw events.
        f"""CREATE TABLE IF NOT EXISTS {minute} (
    `user_name` LowCardinality(String),
    `minute` DateTime('UTC'),
    `activity_name` LowCardinality(String),
    `events` SimpleAggregateFunction(sum, UInt64),
    `bytes_written` SimpleAggregateFunction(sum, UInt64),
    `max_entropy` SimpleAggregateFunction(max, Float32),
    `files` AggregateFunction(uniq, String),
    `devices` AggregateFunction(groupUniqArray, LowCardinality(String))
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (user_name, minute, activity_name)
{ctx.ttl(USER_MINUTE_TABLE, "minute")}
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {ctx.table(USER_MINUTE_TABLE + "_mv")} TO {minute} AS
{_minute_select(ev)}""",
        _plain_table(ctx, DELIVERIES_TABLE, DELIVERY_COLUMNS, "MergeTree", "(alert_uid, time)", "time"),
        _plain_table(ctx, INVENTORY_TABLE, INVENTORY_COLUMNS, "MergeTree", "(device, root, path, scanned_at)",
                     "scanned_at"),
        _plain_table(ctx, HEARTBEATS_TABLE, HEARTBEAT_COLUMNS, "MergeTree", "(device, time)", "time"),
        _plain_table(ctx, BACKUP_RUNS_TABLE, BACKUP_RUN_COLUMNS, "ReplacingMergeTree(updated_at)", "(run_id)",
                     "started_at"),
        f"""CREATE TABLE IF NOT EXISTS {ctx.table(CUSTODY_TABLE)} (
    {_cols(CUSTODY_COLUMNS)}
) ENGINE = MergeTree
ORDER BY (stream, seq)
SETTINGS {_DEDUP}""",
        # Events linked to an incident: same user, from `before_s` before its first event to its
        # last one. SELECT * FROM incident_events(incident = 'uid', before_s = 300)
        f"""CREATE VIEW IF NOT EXISTS {ctx.table("incident_events")} AS
SELECT e.*, a.uid AS incident, a.rule AS rule, a.detected_at AS detected_at
FROM {ev} AS e
INNER JOIN (
    SELECT uid, rule, user, first_seen, detected_at, greatest(last_seen, detected_at) AS last_at
    FROM {ctx.table(ALERTS_TABLE)} FINAL WHERE uid = {{incident:String}}
) AS a ON e.user_name = a.user
WHERE e.time >= a.first_seen - toIntervalSecond({{before_s:UInt32}}) AND e.time <= a.last_at""",  # noqa: S608
        # Backfill the derived tables from the history an upgraded store already holds.
        f"INSERT INTO {by_path} {_by_path_select(ev)} AND {_UNSOURCED}",
        f"INSERT INTO {minute} {_minute_select(ev, where=_UNSOURCED)}",
    ]
    return out


def _by_path_select(events: str) -> str:
    return f"""SELECT p.1 AS path, time, p.2 AS role, uid, user_name, device, share, activity_name,
       p.3 AS other_path, client_ip, process_exe, bytes_written
FROM {events}
ARRAY JOIN arrayFilter(x -> x.1 != '', [(file_path, 'path', file_new_path),
                                      (ifNull(file_new_path, ''), 'new_path', file_path)]) AS p
WHERE 1"""  # noqa: S608 - identifiers only (the database name is checked by the store)


def _minute_select(events: str, where: str = "1") -> str:
    return f"""SELECT user_name, toStartOfMinute(time) AS minute, activity_name, count() AS events,
       sum(ifNull(bytes_written, 0)) AS bytes_written, max(ifNull(entropy, 0)) AS max_entropy,
       uniqState(file_path) AS files, groupUniqArrayState(device) AS devices
FROM {events}
WHERE {where}
GROUP BY user_name, minute, activity_name"""  # noqa: S608 - identifiers only


def _plain_table(
    ctx: Context, name: str, cols: tuple[tuple[str, str], ...], engine: str, order: str, time_col: str
) -> str:
    codecs = {n: _TIME_CODEC for n, t in cols if n == time_col}
    return f"""CREATE TABLE IF NOT EXISTS {ctx.table(name)} (
    {_cols(cols, codecs)}
) ENGINE = {engine}
PARTITION BY toYYYYMM({time_col})
ORDER BY {order}
{ctx.ttl(name, time_col)}
SETTINGS {_DEDUP}, ttl_only_drop_parts = 1"""


def _v3_incident_actions(ctx: Context) -> list[str]:
    return [f"""CREATE TABLE IF NOT EXISTS {ctx.table(INCIDENT_ACTIONS_TABLE)} (
    {_cols(INCIDENT_ACTION_COLUMNS, {})}
) ENGINE = MergeTree
ORDER BY (uid, time)
SETTINGS {_DEDUP}"""]


def _v4_backup(ctx: Context) -> list[str]:
    """The backup controller's versions (suspect flags replace rows: ReplacingMergeTree on rev) and
    its audit trail. Neither expires: they are the chain of custody of the backup itself."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {ctx.table(BACKUP_MANIFEST_TABLE)} (
    {_cols(BACKUP_MANIFEST_COLUMNS)}
) ENGINE = ReplacingMergeTree(rev)
PARTITION BY toYYYYMM(uploaded_at)
ORDER BY (bucket, key, version_id)
SETTINGS {_DEDUP}""",
        f"""CREATE TABLE IF NOT EXISTS {ctx.table(BACKUP_AUDIT_TABLE)} (
    {_cols(BACKUP_AUDIT_COLUMNS)}
) ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY time
SETTINGS {_DEDUP}""",
    ]


def migrations_table_ddl(ctx: Context) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS `{ctx.database}`",
        f"""CREATE TABLE IF NOT EXISTS {ctx.table(MIGRATIONS_TABLE)} (
    `version` UInt32,
    `name` String,
    `applied_at` DateTime64(3, 'UTC')
) ENGINE = MergeTree ORDER BY version""",
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "skeleton: events, alerts, deadletter", _v1_skeleton),
    Migration(2, "forensics: replay positions, codecs, events_by_path, user_minute, deliveries, inventory, "
                 "heartbeats, backup_runs, custody_blocks, incident_events", _v2_forensics),
    Migration(3, "detection: incident_actions (who resolved an incident)", _v3_incident_actions),
    Migration(4, "backup: backup_manifest, backup_audit", _v4_backup),
)
