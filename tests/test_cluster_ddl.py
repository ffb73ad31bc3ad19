"""`dataward schema --cluster NAME`: replicated, sharded DDL that the engine's own parser accepts.

No ClickHouse server (let alone a cluster with Keeper) can run here, so the proof is that chDB's
parser reads every generated statement and that the statements have the shape a cluster needs.
"""
from __future__ import annotations

import re

import chdb
import pytest

from dwcore.schemas.cluster_ddl import cluster_schema
from dwcore.schemas.migrations import MIGRATIONS, table_ttl_days
from tests.procs import run_cli


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _all_statements(cluster: str = "prod") -> list[str]:
    return [s for _, _, statements in cluster_schema("dataward", cluster, table_ttl_days(400)) for s in statements]


def test_engine_parses_every_generated_statement():
    statements = _all_statements()
    assert len(statements) > 30
    for statement in statements:
        # formatQuery parses without executing: a syntax error raises.
        chdb.query("SELECT formatQuery({q:String})", "TSV", params={"q": _escape(statement)})
    with pytest.raises(Exception, match="Syntax error"):
        chdb.query("SELECT formatQuery({q:String})", "TSV", params={"q": _escape("CREATE TABLE t ON CLUSTER c (")})


def test_tables_are_replicated_locally_and_distributed_by_user():
    statements = _all_statements()
    joined = "\n".join(statements)
    creates = [s for s in statements if s.startswith("CREATE TABLE")]
    local = [s for s in creates if "_local` ON CLUSTER `prod` (" in s]
    assert local and all("ENGINE = Replicated" in s and "'{replica}'" in s for s in local)
    assert all("non_replicated_deduplication_window" not in s for s in local)
    assert ("CREATE TABLE IF NOT EXISTS `dataward`.`events` ON CLUSTER `prod` AS `dataward`.`events_local` "
            "ENGINE = Distributed(`prod`, `dataward`, `events_local`, cityHash64(user_name))") in statements
    assert "Distributed(`prod`, `dataward`, `alerts_local`, cityHash64(user))" in joined
    # the version column still decides which alert row wins, now per shard and replica
    assert re.search(r"ReplicatedReplacingMergeTree\('/clickhouse/tables/\{shard\}/dataward/alerts_local', "
                     r"'\{replica\}', version\)", joined)
    # materialized views fire on each shard's local table and write to its local target
    for view in (s for s in statements if s.startswith("CREATE MATERIALIZED VIEW")):
        assert "TO `dataward`.`" in view and "_local` AS" in view
        assert "FROM `dataward`.`events_local`" in view
    # every DDL statement runs on the whole cluster
    assert all("ON CLUSTER `prod`" in s for s in statements if not s.startswith("INSERT"))


def test_cluster_name_is_an_identifier_not_sql():
    with pytest.raises(ValueError, match="cluster name"):
        _all_statements("prod`; DROP TABLE x; --")


def test_schema_command_prints_every_migration_for_a_cluster():
    res = run_cli("schema", "--cluster", "analytics")
    assert res.returncode == 0, res.stderr
    for migration in MIGRATIONS:
        assert f"-- migration {migration.version}: {migration.name}" in res.stdout
    assert "ON CLUSTER `analytics`" in res.stdout
    assert "INSERT INTO `dataward`.`schema_migrations`" in res.stdout
    bad = run_cli("schema", "--cluster", "a b")
    assert bad.returncode == 2 and "cluster name" in bad.stderr
