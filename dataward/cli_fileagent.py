"""`dataward agent audit|canary|inventory ...`: the file-server agent's admin commands."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dataward.cli_common import ConfigOpt

audit_app = typer.Typer(no_args_is_help=True, help="Check audit logs (auditd, Samba full_audit) before wiring them.")
canary_app = typer.Typer(no_args_is_help=True, help="Decoy files: any touch is an alert.")
err = Console(stderr=True)
out = Console()


def register(agent_app: typer.Typer) -> None:
    """Adds this module's commands under `dataward agent`."""
    agent_app.add_typer(audit_app, name="audit")
    agent_app.add_typer(canary_app, name="canary")
    agent_app.command("inventory")(inventory)


def _data_dir(data_dir: str | None, config: Path | None) -> str:
    from dataward.cli_common import load_cli_config

    return load_cli_config(config, data_dir=data_dir).data_dir


ALL_KINDS = "xlsx,pdf,docx,csv,txt"
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="The agent's state directory.")]


@canary_app.command("plant")
def canary_plant(
    dirs: Annotated[list[Path], typer.Argument(help="Directories to plant decoys in.")],
    kinds: Annotated[str, typer.Option("--kinds", help="Comma-separated subset of xlsx,pdf,docx,csv,txt.")] = ALL_KINDS,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Place believable decoy files (valid content of common types) and record them; the agent
    reports any touch of one as a canary event (a running agent picks new ones up within a second)."""
    from rich.table import Table

    from dwcore.agents import canary

    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in canary.KINDS]
    if unknown:
        err.print(f"[red]unknown kinds {unknown}; choose from {sorted(canary.KINDS)}[/red]")
        raise typer.Exit(2)
    try:
        planted = canary.plant([str(d) for d in dirs], _data_dir(data_dir, config), wanted)
    except NotADirectoryError as exc:
        err.print(f"[red]not a directory:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table("canary", "type", "bytes", title=f"{len(planted)} canaries planted")
    for c in planted:
        table.add_row(c.path, c.kind, str(c.size))
    out.print(table)


@canary_app.command("list")
def canary_list(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """The recorded canaries and whether each is still there at its size (by stat only: reading a
    canary would trip the alarm)."""
    import os

    from rich.table import Table

    from dwcore.agents import canary
    from dwcore.schemas.paths import name_bytes

    table = Table("canary", "type", "state")
    for c in canary.load(_data_dir(data_dir, config)):
        try:
            size = os.lstat(name_bytes(c.path, c.escaped)).st_size
            state = "in place" if size == c.size else "[red]SIZE CHANGED[/red]"
        except FileNotFoundError:
            state = "[red]MISSING[/red]"
        table.add_row(c.path, c.kind, state)
    out.print(table)


def _shares(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            err.print(f"[red]--share wants NAME=DIR, got {v!r}[/red]")
            raise typer.Exit(2)
        out[name] = path
    return out


@audit_app.command("parse")
def audit_parse(
    file: Annotated[Path, typer.Argument(help="audit.log or a syslog file with full_audit lines ('-' = stdin).")],
    fmt: Annotated[str, typer.Option("--format", help="auditd or samba.")] = "auditd",
    share: Annotated[list[str] | None, typer.Option("--share", help="Samba share NAME=DIR (repeatable).")] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Samba full_audit:prefix of the share.")] = "%u|%I|%m|%S",
) -> None:
    """Print the attributed records as JSON lines; rejected lines and their reason go to stderr."""
    import msgspec

    from dwcore.agents import audit_auditd, audit_samba

    parser: audit_auditd.AuditdParser | audit_samba.SambaParser
    if fmt == "auditd":
        parser = audit_auditd.AuditdParser()
    elif fmt == "samba":
        parser = audit_samba.SambaParser(prefix=prefix, shares=_shares(share or []))
    else:
        err.print(f"[red]--format must be auditd or samba, not {fmt!r}[/red]")
        raise typer.Exit(2)
    stream = sys.stdin.buffer if str(file) == "-" else open(file, "rb")
    enc = msgspec.json.Encoder()
    write = sys.stdout.buffer.write
    n = 0
    with stream:
        for lineno, line in enumerate(stream, 1):
            for rec in parser.feed(line, lineno):
                write(enc.encode(rec) + b"\n")
                n += 1
            _rejects(parser)
    for rec in getattr(parser, "flush", list)():
        write(enc.encode(rec) + b"\n")
        n += 1
    _rejects(parser)
    sys.stdout.flush()
    c = parser.counters
    err.print(f"{n} records, {c['rejected']} rejected, {c.get('ignored', 0)} ignored (not file events), "
              f"{c['lines']} lines", highlight=False)


def _rejects(parser) -> None:
    for rej in parser.rejected:
        where = f"line {rej.line}" if rej.line else "end of log"
        err.print(f"rejected {where}: {rej.reason}" + (f": {rej.text}" if rej.text else ""),
                  highlight=False, markup=False, soft_wrap=True)
    parser.rejected.clear()


def inventory(
    dirs: Annotated[list[Path], typer.Argument(help="Dataset directories to inventory.")],
    device: Annotated[str | None, typer.Option("--device", help="Device id (default: host name).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Record size, type, owner and mtime of every file under DIR in the store (table inventory);
    summarise with `dataward report inventory`."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dataward.cli_common import load_cli_config
    from dwcore.agents.inventory import scan
    from dwcore.schemas.ddl import INVENTORY_COLUMNS, INVENTORY_TABLE
    from dwcore.sinks.store import Store

    cfg = load_cli_config(config, data_dir=data_dir, agent__device=device)
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        err.print(f"[red]not a directory:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    files = size = 0
    with Store.open(cfg.store_dsn, cfg.store.database, cfg.store.retention_days) as store, Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[files]:,} files, {task.fields[gib]:.2f} GiB"), TimeElapsedColumn(),
            console=err, transient=False) as bar:
        store.writer.ensure_schema()
        for d in dirs:
            task = bar.add_task(f"inventory {d}", total=None, files=0, gib=0.0)
            rows = []
            for row in scan(str(d), cfg.device, exclude=(cfg.data_dir,)):
                rows.append(row)
                files += 1
                size += row.size
                if len(rows) >= 10_000:
                    store.writer.insert(INVENTORY_TABLE, INVENTORY_COLUMNS, rows)
                    rows = []
                    bar.update(task, files=files, gib=size / 2**30)
            store.writer.insert(INVENTORY_TABLE, INVENTORY_COLUMNS, rows)
            bar.update(task, files=files, gib=size / 2**30, total=1, completed=1)
    out.print(f"{files:,} files, {size / 2**30:.2f} GiB recorded; `dataward report inventory` summarises them",
              highlight=False)
