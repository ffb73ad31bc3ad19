"""`dataward schema`: the forensic store's DDL, for one node or for a ClickHouse cluster."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True)


def schema(
    cluster: Annotated[str, typer.Option("--cluster", help="Cluster name (remote_servers): ReplicatedMergeTree "
                                         "tables ON CLUSTER, Distributed tables sharded by user.")] = "",
    apply: Annotated[str, typer.Option("--apply", help="Apply to this ClickHouse server URL "
                                       "(http[s]://user@host:8123; password from CLICKHOUSE_PASSWORD).")] = "",
    database: Annotated[str, typer.Option("--database", help="Database name.")] = "dataward",
    retention_days: Annotated[int, typer.Option("--retention-days", help="Event retention (TTL) in days.")] = 400,
) -> None:
    """Print (or apply) the schema migrations, in order, as SQL statements."""
    from dwcore.schemas.cluster_ddl import cluster_schema, record_statement
    from dwcore.schemas.migrations import MIGRATIONS, Context, migrations_table_ddl, table_ttl_days

    ttl = table_ttl_days(retention_days)
    if cluster:
        try:
            steps = cluster_schema(database, cluster, ttl)
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    else:
        ctx = Context(database, ttl)
        steps = [(0, "schema_migrations", migrations_table_ddl(ctx))]
        steps += [(m.version, m.name, m.statements(ctx)) for m in MIGRATIONS]
    if not apply:
        for version, name, statements in steps:
            out.print(f"-- migration {version}: {name}")
            for statement in statements:
                out.print(f"{statement};\n", markup=False)
            if version:
                out.print(f"{record_statement(database, version, name)};\n", markup=False)
        return
    import os

    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=apply, password=os.environ.get("CLICKHOUSE_PASSWORD", ""))
    done: set[int] = set()
    for version, name, statements in steps:
        if version and version in done:
            continue
        for statement in statements:
            client.command(statement)
        if version == 0:
            log_sql = f"SELECT version FROM `{database}`.`schema_migrations`"  # noqa: S608
            done = {int(r[0]) for r in client.query(log_sql).result_rows}
            continue
        client.command(record_statement(database, version, name))
        out.print(f"applied migration {version}: {name}")
