"""`dataward backup ...`: zero-trust backup to a versioned S3 bucket (see docs/backup.md)."""
from __future__ import annotations

import datetime as dt
import getpass
import os
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dataward.cli_common import ConfigOpt, err, out, serve_metrics
from dataward.cli_common import load_cli_config as _config
from dataward.cli_common import ready as _ready
from dataward.cli_common import stop_on_signals as _stop_on_signals
from dataward.logs import setup_logging

app = typer.Typer(no_args_is_help=True, help="Zero-trust backup: halts on attack, restores any version, seals.")

DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="State directory (journal, chDB store).")]
LogOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")]
BucketOpt = Annotated[str | None, typer.Option("--bucket", help="Versioned S3 bucket (or backup.bucket).")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint (MinIO, a local test server).")]


def _ms(ms: int) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def parse_time(value: str) -> int:
    """ISO 8601 (UTC when no zone is given), or epoch milliseconds -> epoch ms."""
    if value.isdigit():
        return int(value)
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time or epoch ms: {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


class _Bar:
    """Rich progress for files and bytes (the uploader's Progress protocol)."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.task = progress.add_task(label, total=None)

    def total(self, files: int, size: int) -> None:
        self.progress.update(self.task, total=size)

    def advance(self, files: int, size: int) -> None:
        self.progress.advance(self.task, size)


def _progress(disable: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                    console=err, disable=disable, transient=False)


def _recorder(cfg):
    from dwcore.sinks.backup_record import StoreRecorder
    from dwcore.sinks.errors import StoreFailure
    from dwcore.sinks.store import Store

    try:
        store = Store.open(cfg.store_dsn, cfg.store.database, cfg.store.retention_days)
        store.writer.ensure_schema()
    except StoreFailure as exc:
        # `dataward run` owns the embedded store: keep the rows for replay; the bucket manifest and
        # the journal hold everything anyway.
        err.print(f"[yellow]ClickHouse not available ({escape(str(exc)[:120])}); rows parked in "
                  f"{escape(str(cfg.backup_dir / 'pending'))}[/yellow]")
        store = None
    return StoreRecorder(store.writer if store else None, cfg.backup_dir / "pending")


def _parts(cfg, bucket: str | None, endpoint_url: str | None, recorder=None):
    from dataward.backup_setup import BackupParts

    try:
        return BackupParts(cfg, bucket or "", endpoint_url or "", recorder)
    except ValueError as exc:
        err.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def run(
    directory: Annotated[Path, typer.Argument(help="Directory to back up.")],
    bucket: BucketOpt = None,
    prefix: Annotated[str | None, typer.Option("--prefix", help="Key prefix in the bucket.")] = None,
    endpoint_url: EndpointOpt = None,
    continuous: Annotated[bool, typer.Option("--continuous", help="Keep watching DIR; upload on change.")] = False,
    every: Annotated[float, typer.Option("--every", help="Scheduled mode: a pass every N seconds.")] = 0.0,
    follow_alerts: Annotated[bool, typer.Option("--follow-alerts", help="Halt on alerts from dw.alerts (Kafka).")]
    = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "warning",
) -> None:
    """Back up DIR to the bucket (incremental-forever, version-aware, resumable)."""
    setup_logging(log_level)
    cfg = _config(config, data_dir=data_dir, backup__bucket=bucket, backup__prefix=prefix,
                  backup__endpoint_url=endpoint_url)
    if not cfg.backup.bucket:
        err.print("[red]--bucket is required (or backup.bucket in the config)[/red]")
        raise typer.Exit(2)
    if not directory.is_dir():
        err.print(f"[red]not a directory:[/red] {escape(str(directory))}")
        raise typer.Exit(2)
    parts = _parts(cfg, None, None, _recorder(cfg))
    if parts.gate.closed:
        print_halt(parts)
        raise typer.Exit(3)
    if continuous or every > 0:
        _metrics(cfg, parts)
    stop = _stop_on_signals()
    if follow_alerts:
        _start_alert_thread(cfg, parts, stop)
    parts.gate.watch_marker()
    try:
        if continuous:
            _run_continuous(parts, str(directory), stop)
        elif every > 0:
            from dwcore.sinks.backup_continuous import run_scheduled

            _ready(f"scheduled backup of {directory} every {every:g}s")
            run_scheduled(parts.uploader(str(directory), cfg.backup.prefix), every, stop)
        else:
            _run_once(parts, str(directory))
    finally:
        parts.close()
    if parts.gate.closed:
        print_halt(parts)
        raise typer.Exit(3)


def _run_once(parts, directory: str) -> None:
    with _progress() as progress:
        up = parts.uploader(directory, parts.cfg.backup.prefix, _Bar(progress, "backup"))
        run_id = up.start_run("once")
        _ready(f"backup run {run_id}")
        stats = up.backup_tree()
        manifest = up.finish("halted" if stats.halted else ("partial" if stats.errors else "complete"))
    table = Table("run", "files", "uploaded", "adopted", "unchanged", "bytes uploaded", "errors", "status")
    table.add_row(run_id, str(len(manifest.files)), str(stats.uploaded), str(stats.adopted), str(stats.unchanged),
                  f"{stats.bytes_uploaded:,}", str(len(stats.errors)), manifest.status)
    out.print(table)
    for path in stats.errors[:20]:
        err.print(f"[red]failed:[/red] {escape(path)}")


def _run_continuous(parts, directory: str, stop: threading.Event) -> None:
    from dwcore.agents.watcher import FileWatcher

    cont = parts.continuous([directory])
    watcher = FileWatcher([directory], parts.cfg.device, cont.on_events, exclude=[parts.cfg.data_dir])
    cont.start()
    watcher.start()
    _ready(f"continuous backup of {directory} to s3://{parts.bucket}/{parts.cfg.backup.prefix}")
    try:
        stop.wait()
    finally:
        watcher.stop()
        cont.stop()
    out.print(f"stopped: {cont.stats.uploaded} uploaded, {cont.stats.unchanged} unchanged")


def _start_alert_thread(cfg, parts, stop: threading.Event) -> None:
    import socket

    from dwcore.schemas.topics import Topics
    from dwcore.sinks.backup_alerts import follow_alerts

    topic = Topics.with_prefix(cfg.kafka.topic_prefix).alerts
    group = f"{cfg.kafka.topic_prefix}dataward-backup-{socket.gethostname()}-{os.getpid()}"
    started = threading.Event()
    thread = threading.Thread(target=follow_alerts, daemon=True, name="dw-backup-alerts",
                              args=(cfg.kafka.client_config(), topic, group, parts.controller.on_alert, stop,
                                    started.set))
    thread.start()
    started.wait(30)


def _metrics(cfg, parts) -> None:
    """/metrics of a long-running backup process; dataward_backup_halted follows the gate."""
    from dwcore.metrics import BACKUP_HALTED

    BACKUP_HALTED.set_function(lambda: 1.0 if parts.gate.closed else 0.0)
    serve_metrics(cfg, "backup")


def print_halt(parts) -> None:
    for inc in parts.journal.open_incidents():
        err.print(f"[bold red]BACKUP HALTED[/bold red] by incident {escape(inc.uid)} ({escape(inc.rule)}, "
                  f"{escape(inc.severity)}, user {escape(inc.user)}) at {_ms(inc.halted_at)} UTC. "
                  f"Review, then: dataward backup resume --incident {escape(inc.uid)}")
    if not parts.journal.open_incidents():
        err.print(f"[bold red]BACKUP HALTED[/bold red]: {escape(parts.gate.reason)}")


@app.command()
def controller(
    bootstrap: Annotated[str | None, typer.Option("--bootstrap", help="Kafka bootstrap (or KAFKA_BOOTSTRAP).")]
    = None,
    topic_prefix: Annotated[str | None, typer.Option("--topic-prefix")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Distributed mode: consume dw.alerts; halt backups sharing this data dir and run the hooks."""
    setup_logging(log_level)
    cfg = _config(config, data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix)
    import socket

    from dwcore.schemas.topics import Topics
    from dwcore.sinks.backup_alerts import follow_alerts

    parts = _parts(cfg, None, None, _recorder(cfg))
    _metrics(cfg, parts)
    stop = _stop_on_signals()

    def on_alert(alert) -> None:
        incident = parts.controller.on_alert(alert)
        if incident is not None:
            out.print(f"[bold red]BACKUP HALTED[/bold red] incident={escape(incident.uid)} "
                      f"alert_to_halt_ms={parts.controller.latencies_ms[-1]:.1f}")

    group = f"{cfg.kafka.topic_prefix}dataward-backup-controller-{socket.gethostname()}"
    try:
        follow_alerts(cfg.kafka.client_config(), Topics.with_prefix(cfg.kafka.topic_prefix).alerts, group, on_alert,
                      stop, ready=lambda: _ready("backup controller consuming alerts"))
        parts.controller.wait_after_halt(30)
    finally:
        parts.close()


@app.command()
def status(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Halted or not, incidents, recent runs, uploads in flight."""
    setup_logging("warning")
    cfg = _config(config, data_dir=data_dir)
    from dwcore.sinks.backup_journal import Journal

    journal = Journal(cfg.backup_dir)
    try:
        open_incidents = journal.open_incidents()
        if open_incidents or journal.halted_marker():
            out.print("[bold red]HALTED[/bold red]: nothing is written to the bucket until "
                      "`dataward backup resume --incident ID`", soft_wrap=True)
        else:
            out.print("[green]running[/green] (not halted)")
        # One line per incident (not a table): ids must be copyable whole, at any terminal width.
        for i in sorted(journal.incidents(), key=lambda i: i.halted_at, reverse=True)[:20]:
            state = (f"resumed by {escape(i.resumed_by)} at {_ms(i.resumed_at)} UTC" if i.resumed_at
                     else "[bold red]halting[/bold red]")
            out.print(f"incident {escape(i.uid)}: {escape(i.rule)} {escape(i.severity)} user={escape(i.user)} "
                      f"first_event={_ms(i.first_seen)} halted_at={_ms(i.halted_at)} "
                      f"alert_to_halt_ms={i.halted_at - i.received_at} suspect_versions={i.suspect_versions} "
                      f"{state}", soft_wrap=True)
        runs = Table("run", "bucket", "prefix", "root", "mode", "started", "finished", "status", "uploaded",
                     "bytes", title="recent runs")
        for r in journal.runs(10):
            runs.add_row(r[0], escape(r[1]), escape(r[2]), escape(r[3]), r[4], _ms(r[5]), _ms(r[6]), r[7],
                         str(r[8]), f"{r[9]:,}")
        out.print(runs)
        pending = journal.pending()
        if pending:
            out.print(f"{len(pending)} uploads in flight or interrupted (a rerun of `backup run` resumes them)")
    finally:
        journal.close()


@app.command()
def resume(
    incident: Annotated[str, typer.Option("--incident", help="The incident id (alert uid) that halted the backup.")],
    by: Annotated[str | None, typer.Option("--by", help="Who resumes (default: the logged-in user).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Lift a halt after review; recorded with who and when."""
    setup_logging("warning")
    cfg = _config(config, data_dir=data_dir)
    parts = _parts(cfg, None, None, _recorder(cfg))
    who = by or getpass.getuser()
    who = f"{who} (uid {os.getuid()}{', sudo from ' + os.environ['SUDO_USER'] if os.environ.get('SUDO_USER') else ''})"
    try:
        inc = parts.controller.resume(incident, who)
    except KeyError:
        err.print(f"[red]no such incident:[/red] {escape(incident)}")
        raise typer.Exit(2) from None
    finally:
        parts.close()
    out.print(f"resumed incident {escape(inc.uid)} by {escape(inc.resumed_by)} at {_ms(inc.resumed_at)} UTC")
