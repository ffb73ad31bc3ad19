"""`dataward custody verify|anchor`: prove the forensic history was not edited."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dataward.cli_common import ConfigOpt

custody_app = typer.Typer(no_args_is_help=True, help="Tamper evidence: sealed blocks of events, chained.")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="State directory (chDB store).")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint (MinIO, a test server).")]
PrefixOpt = Annotated[str, typer.Option("--anchor-prefix", "--prefix", help="Key prefix of the anchors.")]


def _rows(config: Path | None, data_dir: str | None):
    from dataward.cli_report import _cfg, _runner

    run = _runner(_cfg(config, data_dir))
    return lambda sql, params: run(sql, params).rows


def _s3(endpoint_url: str | None) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url)


@custody_app.command("verify")
def verify_cmd(
    anchor_bucket: Annotated[str | None, typer.Option("--anchor-bucket", help="Also check the anchored heads.")]
    = None,
    anchor_prefix: PrefixOpt = "custody/",
    endpoint_url: EndpointOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json, jsonl, csv, tsv or vertical.")] = "table",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Recompute every custody chain from the stored events; name the first altered or missing block.

    Exit status 0 when every chain verifies (and every anchor matches), 1 otherwise."""
    from dataward.console import inert
    from dataward.report_output import show_table
    from dwcore.sinks.custody import verify
    from dwcore.sinks.reports import Table

    rows = _rows(config, data_dir)
    try:
        results = verify(rows)
        anchors: tuple[int, list[Any]] = (0, [])
        if anchor_bucket:
            from dwcore.sinks.anchor import check_anchors

            anchors = check_anchors(rows, _s3(endpoint_url), anchor_bucket, anchor_prefix)
    except Exception as exc:
        err.print(f"custody verify failed: {inert(exc)}", markup=False)
        raise typer.Exit(2) from None
    table = Table("custody chains", ["stream", "blocks", "verified", "rows", "unsealed_rows", "status",
                                     "first_bad_block", "problem", "detail"], [])
    for r in results:
        p = r.first_problem
        table.rows.append([r.stream, r.blocks, r.verified, r.rows, r.unsealed_rows, "ok" if p is None else "FAILED",
                           p.seq if p else None, p.problem if p else None, p.detail if p else None])
    for m in anchors[1]:
        table.rows.append([m.stream, None, None, None, None, "FAILED", m.seq, "anchor mismatch",
                           f"{m.key}: anchored {m.anchored}, store has {m.in_store or 'no such block'}"])
    show_table(out, sys.stdout, table, fmt, footer=False)
    failed = [row for row in table.rows if row[5] != "ok"]
    summary = (f"{len(results)} chains, {sum(r.verified for r in results)} blocks verified, "
               f"{anchors[0]} anchors checked: " + ("FAILED" if failed else "ok"))
    err.print(summary, markup=False)
    if failed:
        raise typer.Exit(1)


@custody_app.command("anchor")
def anchor_cmd(
    bucket: Annotated[str, typer.Option("--bucket", help="An S3 bucket with object lock enabled.")],
    prefix: Annotated[str, typer.Option("--prefix", help="Key prefix.")] = "custody/",
    days: Annotated[int, typer.Option("--days", help="Retention of each anchor, in days.")] = 365,
    mode: Annotated[str, typer.Option("--mode", help="compliance or governance.")] = "compliance",
    endpoint_url: EndpointOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write each chain's newest block hash to an object-locked bucket (run it from cron)."""
    from dataward.console import inert
    from dwcore.sinks.anchor import anchor_heads

    if mode.lower() not in ("compliance", "governance"):
        raise typer.BadParameter("--mode is compliance or governance")
    try:
        done = anchor_heads(_rows(config, data_dir), _s3(endpoint_url), bucket, prefix, days, mode)
    except Exception as exc:
        err.print(f"custody anchor failed: {inert(exc)}", markup=False)
        raise typer.Exit(2) from None
    for a in done:
        out.print(f"anchored {inert(a.stream)} block {a.seq} {a.block_hash} -> s3://{inert(bucket)}/{inert(a.key)}",
                  markup=False)
    err.print(f"{len(done)} new anchors", markup=False)
