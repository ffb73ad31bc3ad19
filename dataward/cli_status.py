"""`dataward status`: agents, open incidents, deliveries and the backup on one screen (or JSON).

Host names, user names, paths and titles come from events an attacker can shape: every such value
is shown through ``inert`` in rich ``Text`` (never markup); ``--format json`` carries them exactly.
"""
from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from dataward.console import inert, inert_text
from dataward.logs import setup_logging
from dataward.status import DELIVERY_WINDOW_H, Status, collect, to_json

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_SEVERITY_STYLE = {"low": "cyan", "medium": "yellow", "high": "bold red", "critical": "bold white on red"}


def _utc(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def render(status: Status) -> Group:
    parts: list[Table | Text] = [Text(f"dataward status at {_utc(status.taken_at)} UTC", style="bold")]
    agents = _table("agents", "device", "agent", "version", "last heartbeat (UTC)", "state", "events seen",
                    "spool", "lag")
    for a in status.agents:
        state = Text(f"stale, {_age(a.age_s)}", style="bold red") if a.stale else Text(
            f"{inert(a.status)}, {_age(a.age_s)}", style="green" if a.status == "ok" else "bold red")
        agents.add_row(inert_text(a.device), inert_text(a.agent), inert_text(a.version), _utc(a.last_heartbeat),
                       state, f"{a.events_seen:,}", Text(f"{a.spool_depth:,}", style="yellow" if a.spool_depth else ""),
                       "" if a.lag_ms is None else f"{a.lag_ms / 1000:.1f} s")
    parts.append(agents if status.agents else Text("agents: no heartbeat stored yet", style="yellow"))
    incidents = _table(f"open incidents: {status.open_incidents}", "severity", "rule", "user", "files",
                       "devices", "detected (UTC)", "incident")
    for i in status.incidents:
        severity = Text(inert(i.severity), style=_SEVERITY_STYLE.get(i.severity, ""))
        if i.drill:
            severity.append(" drill", style="cyan")
        incidents.add_row(severity, inert_text(i.rule), inert_text(i.user), str(i.files),
                          inert_text(", ".join(i.devices)), _utc(i.detected_at), inert_text(i.uid))
    parts.append(incidents if status.incidents else Text("open incidents: none", style="green"))
    deliveries = _table(f"deliveries, last {DELIVERY_WINDOW_H} h", "destination", "kind", "status", "count",
                        "last (UTC)")
    for d in status.deliveries:
        style = "green" if d.status == "delivered" else "cyan" if d.status == "skipped_drill" else "bold red"
        deliveries.add_row(inert_text(d.destination), inert_text(d.kind), Text(inert(d.status), style=style),
                           f"{d.count:,}", _utc(d.last))
    parts.append(deliveries if status.deliveries else Text(f"deliveries: none in the last {DELIVERY_WINDOW_H} h"))
    b = status.backup
    style = {"halted": "bold white on red", "running": "green", "idle": "green"}.get(b.state, "yellow")
    line = Text("backup: ")
    line.append(b.state.upper() if b.state == "halted" else b.state, style=style)
    if b.local_halt:
        line.append(" (HALTED marker in this data dir's backup journal)")
    for h in b.halts:
        line.append("\n  halted for incident ")
        line.append(inert(h.incident))
        line.append(f" at {_utc(h.halted_at)} UTC: `dataward backup resume --incident ID` after review")
    parts.append(line)
    if b.runs:
        runs = _table("backup runs (latest per source)", "source", "bucket", "prefix", "mode", "status",
                      "updated (UTC)", "files", "bytes", "errors", "reason")
        for r in b.runs:
            runs.add_row(inert_text(r.source), inert_text(r.bucket), inert_text(r.prefix), inert_text(r.mode),
                         inert_text(r.status), _utc(r.updated_at), f"{r.files:,}", f"{r.bytes:,}", str(r.errors),
                         inert_text(r.reason))
        parts.append(runs)
    for section, error in status.errors.items():
        parts.append(Text(f"{section}: could not be read: {inert(error)}", style="red"))
    return Group(*parts)


def status(
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="State directory of `dataward run` or the "
                                                 "ClickHouse sink (or store.url for a server).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (or DATAWARD_CONFIG).")]
    = None,
) -> None:
    """Agents (last heartbeat, lag, spool), open incidents, deliveries and the backup, on one screen."""
    setup_logging("warning")
    if fmt not in ("table", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}: use table or json")
    from dataward.cli_common import load_cli_config as _config

    cfg = _config(config, data_dir=data_dir)
    from dwcore.sinks.errors import StoreError
    from dwcore.sinks.query_client import run_query

    def query(sql: str):
        return run_query(sql, None, dsn=cfg.store_dsn, database=cfg.store.database,
                         addr_file=cfg.query_addr_file).rows

    try:
        query("SELECT 1")
    except StoreError as exc:
        err.print(Text(f"cannot read the store: {inert(exc)}", style="red"))
        raise typer.Exit(2) from None
    local_halt = (cfg.backup_dir / "HALTED").exists()
    snapshot = collect(query, int(time.time() * 1000), cfg.capture.heartbeat_s, local_halt,
                       backup_configured=bool(cfg.backup.bucket))
    if fmt == "json":
        sys.stdout.write(to_json(snapshot).decode() + "\n")
    else:
        out.print(render(snapshot))
