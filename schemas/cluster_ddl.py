"""The forensic schema for a ClickHouse cluster, derived from the single-node migrations.

Every table becomes two: ``<t>_local``, a Replicated* engine created ``ON CLUSTER`` (each shard
keeps its replicas in step through Keeper), and ``<t>``, a ``Distributed`` table over it sharded by
``cityHash64(user_name)`` (or the table's own user column), so one user's whole history lives on
one shard and per-user forensics never fan out. Readers and writers keep using the plain names;
materialized views fire on the local tables, shard by shard. The input is dataward's own DDL
(``schemas.migrations``), never user text, so a few exact rewrites are enough.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from dwcore.schemas.migrations import MIGRATIONS, Context, migrations_table_ddl

# The column each table is sharded by: the acting user wherever a table has one.
SHARD_KEYS: dict[str, str] = {
    "events": "cityHash64(user_name)",
    "events_by_path": "cityHash64(user_name)",
    "user_minute": "cityHash64(user_name)",
    "alerts": "cityHash64(user)",
    "incident_actions": "cityHash64(uid)",
    "deadletter": "rand()",
    "deliveries": "cityHash64(alert_uid)",
}
DEFAULT_SHARD_KEY = "rand()"

_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS `(?P<db>\w+)`\.`(?P<t>\w+)` \(", re.S)
_ENGINE = re.compile(r"\) ENGINE = (?P<engine>\w*MergeTree)(?:\((?P<args>[^)]*)\))?")
_CREATE_DB = re.compile(r"^CREATE DATABASE IF NOT EXISTS `(?P<db>\w+)`$")
_CREATE_MV = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS `(?P<db>\w+)`\.`(?P<v>\w+)` TO `\w+`\.`(?P<to>\w+)`")
_CREATE_VIEW = re.compile(r"^CREATE VIEW IF NOT EXISTS `(?P<db>\w+)`\.`(?P<v>\w+)`")
_CODEC = re.compile(r" CODEC\(.*\)$")
_ALTER = re.compile(r"^ALTER TABLE `(?P<db>\w+)`\.`(?P<t>\w+)` (?P<rest>.*)$", re.S)


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"cluster name must be letters, digits and _: {name!r}")
    return name


def _localize(sql: str, db: str) -> str:
    """Table references inside a materialized view's SELECT, pointed at the local tables: a view
    fires on inserts into the shard's own table."""
    return re.sub(rf"`{db}`\.`(\w+)`", rf"`{db}`.`\1_local`", sql)


def cluster_statements(statements: Iterable[str], database: str, cluster: str) -> list[str]:
    """Rewrite single-node statements for ``cluster`` (see the module docstring)."""
    cluster = _ident(cluster)
    on = f"ON CLUSTER `{cluster}`"
    out: list[str] = []
    for statement in statements:
        sql = statement.strip()
        if m := _CREATE_DB.match(sql):
            out.append(f"{sql} {on}")
        elif m := _CREATE_TABLE.match(sql):
            db, table = m["db"], m["t"]
            local = f"`{db}`.`{table}_local`"

            def replicated(e: re.Match[str], db: str = db, table: str = table) -> str:
                args = f"'/clickhouse/tables/{{shard}}/{db}/{table}_local', '{{replica}}'"
                if e["args"]:
                    args += f", {e['args']}"
                return f") ENGINE = Replicated{e['engine']}({args})"

            body = _ENGINE.sub(replicated, sql[m.end():], count=1)
            body = body.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
            out.append(f"CREATE TABLE IF NOT EXISTS {local} {on} ({body}")
            key = SHARD_KEYS.get(table, DEFAULT_SHARD_KEY)
            out.append(f"CREATE TABLE IF NOT EXISTS `{db}`.`{table}` {on} AS {local} "
                       f"ENGINE = Distributed(`{cluster}`, `{db}`, `{table}_local`, {key})")
        elif m := _CREATE_MV.match(sql):
            db = m["db"]
            head = f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`{m['v']}` {on} TO `{db}`.`{m['to']}_local`"
            out.append(head + _localize(sql[m.end():], m["db"]))
        elif m := _CREATE_VIEW.match(sql):
            out.append(f"CREATE VIEW IF NOT EXISTS `{m['db']}`.`{m['v']}` {on}{sql[m.end():]}")
        elif m := _ALTER.match(sql):
            db, table, rest = m["db"], m["t"], m["rest"]
            out.append(f"ALTER TABLE `{db}`.`{table}_local` {on} {rest}")
            if rest.startswith(("ADD COLUMN", "MODIFY COLUMN", "DROP COLUMN")) and "CODEC" not in rest:
                out.append(f"ALTER TABLE `{db}`.`{table}` {on} {rest}")
            elif rest.startswith("ADD COLUMN"):
                # A Distributed table keeps no data, so it takes the column without its codec.
                out.append(f"ALTER TABLE `{db}`.`{table}` {on} {_CODEC.sub('', rest)}")
        elif sql.startswith("INSERT INTO"):
            # A backfill reads and writes through the Distributed tables: rows land on the shard of
            # their user, the same shard as their source rows.
            out.append(sql)
        else:
            raise ValueError(f"no cluster form for statement: {sql[:80]!r}")
    return out


def cluster_schema(database: str, cluster: str, ttl_days: dict[str, int]) -> list[tuple[int, str, list[str]]]:
    """(version, name, statements) for every migration, version 0 being the migration log itself."""
    ctx = Context(database, ttl_days)
    out = [(0, "schema_migrations", cluster_statements(migrations_table_ddl(ctx), database, cluster))]
    for migration in MIGRATIONS:
        statements = cluster_statements(migration.statements(ctx), database, cluster)
        out.append((migration.version, migration.name, statements))
    return out


def record_statement(database: str, version: int, name: str) -> str:
    """The row that marks a migration applied on the cluster (through the Distributed log table)."""
    quoted = "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return (f"INSERT INTO `{database}`.`schema_migrations` (version, name, applied_at) "  # noqa: S608
            f"VALUES ({int(version)}, {quoted}, now64(3))")
