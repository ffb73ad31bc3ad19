"""`dataward backup restore|seal`: bring back the clean versions, and lock a release against change."""
from __future__ import annotations

import datetime as dt
import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dataward.cli_backup import (
    BucketOpt,
    DataDirOpt,
    EndpointOpt,
    _Bar,
    _ms,
    _parts,
    _progress,
    _recorder,
    parse_time,
)
from dataward.cli_common import ConfigOpt, err, out
from dataward.cli_common import load_cli_config as _config
from dataward.logs import setup_logging


def register(app: typer.Typer) -> None:
    """Adds `restore` and `seal` under `dataward backup`."""
    app.command()(restore)
    app.command()(seal)


def restore(
    prefix: Annotated[str, typer.Argument(help="Key prefix, or s3://bucket/prefix.")],
    to: Annotated[Path, typer.Option("--to", help="Directory to restore into.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO 8601 time (UTC if no zone) or epoch ms.")] = None,
    before_incident: Annotated[str | None, typer.Option("--before-incident", help="Incident id.")] = None,
    bucket: BucketOpt = None,
    endpoint_url: EndpointOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Restore the newest clean version of each object not after a point in time."""
    setup_logging("warning")
    if (as_of is None) == (before_incident is None):
        err.print("[red]give exactly one of --as-of or --before-incident[/red]")
        raise typer.Exit(2)
    cfg = _config(config, data_dir=data_dir)
    from dwcore.sinks.backup_restore import restore as do_restore
    from dwcore.sinks.backup_s3 import split_s3_url

    parts = _parts(cfg, bucket, endpoint_url)
    try:
        b, p = split_s3_url(prefix, parts.bucket)
        if not b:
            err.print("[red]--bucket is required (or s3://bucket/prefix)[/red]")
            raise typer.Exit(2)
        if before_incident is not None:
            inc = parts.journal.incident(before_incident)
            if inc is None:
                err.print(f"[red]no such incident in {escape(str(cfg.backup_dir))}:[/red] {escape(before_incident)}")
                raise typer.Exit(2)
            point = inc.first_seen - 1
        else:
            point = parse_time(as_of or "")
        with _progress() as progress:
            bar = _Bar(progress, "restore")
            results = do_restore(parts.s3, b, p, str(to), point, parts.journal.version_times(b),
                                 parts.journal.incidents(), on_total=bar.total,
                                 on_done=lambda n: bar.advance(1, n))
    finally:
        parts.close()
    table = Table("path", "version", "size", "version time (UTC)", "status", "detail",
                  title=f"restore of s3://{escape(b)}/{escape(p)} as of {_ms(point)} UTC")
    for r in results:
        table.add_row(escape(r.key), escape(r.version_id), f"{r.size:,}", _ms(r.time_ms), r.status, escape(r.detail))
    out.print(table)
    ok = sum(r.status == "restored" for r in results)
    out.print(f"{ok} of {len(results)} objects restored to {escape(str(to))}")
    if ok != len(results):
        raise typer.Exit(1)


def seal(
    prefix: Annotated[str, typer.Argument(help="Key prefix of the release, or s3://bucket/prefix.")],
    days: Annotated[int, typer.Option("--days", help="Retention in days.")],
    mode: Annotated[str, typer.Option("--mode", help="governance or compliance.")] = "governance",
    legal_hold: Annotated[bool, typer.Option("--legal-hold", help="Also put a legal hold on each version.")] = False,
    bucket: BucketOpt = None,
    endpoint_url: EndpointOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Object-lock the current versions under PREFIX (needs a bucket with object lock)."""
    setup_logging("warning")
    if mode not in ("governance", "compliance"):
        err.print("[red]--mode must be governance or compliance[/red]")
        raise typer.Exit(2)
    cfg = _config(config, data_dir=data_dir)
    from dwcore.sinks.backup_model import AuditRow
    from dwcore.sinks.backup_s3 import split_s3_url
    from dwcore.sinks.backup_seal import seal as do_seal

    recorder = _recorder(cfg)
    parts = _parts(cfg, bucket, endpoint_url, recorder)
    try:
        b, p = split_s3_url(prefix, parts.bucket)
        with _progress() as progress:
            task = progress.add_task("seal", total=None)
            results = do_seal(parts.s3, b, p, days, mode, legal_hold, parts.journal.version_times(b),
                              on_done=lambda: progress.advance(task))
        who = getpass.getuser()
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        detail = {"bucket": b, "prefix": p, "days": days, "mode": mode, "legal_hold": legal_hold,
                  "versions": [[s.key, s.version_id, s.status] for s in results]}
        parts.journal.audit(now, "seal", "", who, detail)
        import json

        recorder.audit([AuditRow(time=now, action="seal", incident="", who=who, detail=json.dumps(detail))])
    finally:
        parts.close()
    table = Table("key", "version", "mode", "retain until", "legal hold", "status", "detail",
                  title=f"seal of s3://{escape(b)}/{escape(p)}")
    for s in results:
        table.add_row(escape(s.key), escape(s.version_id), s.mode, s.retain_until, "ON" if s.legal_hold else "",
                      s.status, escape(s.detail))
    out.print(table)
    if any(s.status != "sealed" for s in results):
        raise typer.Exit(1)
