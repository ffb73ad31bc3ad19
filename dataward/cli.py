"""`dataward ...`: the command line. Wiring only: parse, load config, call a part, report."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dataward import cli_backup, cli_backup_restore, cli_detect, cli_fileagent, cli_schema
from dataward.cli_alerts import app as alerts_app
from dataward.cli_common import (
    BootstrapOpt,
    ConfigOpt,
    DataDirOpt,
    LogOpt,
    PolicyOpt,
    PrefixOpt,
    WatchOpt,
    err,
    out,
    serve_metrics,
)
from dataward.cli_common import load_cli_config as _config
from dataward.cli_common import load_cli_policy as _policy
from dataward.cli_common import ready as _ready
from dataward.cli_common import stop_on_signals as _stop_on_signals
from dataward.cli_common import watch_dirs as _watch_dirs
from dataward.cli_custody import custody_app
from dataward.cli_report import report_app
from dataward.cli_s3 import s3_app
from dataward.logs import setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="dataward: data-layer security pipeline.")
agent_app = typer.Typer(no_args_is_help=True, help="Collectors that run on file servers and beside buckets.")
sink_app = typer.Typer(no_args_is_help=True, help="Sinks that consume Kafka topics (distributed mode).")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics.")
policy_app = typer.Typer(no_args_is_help=True, help="Detection policy.")
app.add_typer(agent_app, name="agent")
app.add_typer(sink_app, name="sink")
app.add_typer(__import__("dataward.cli_simulate", fromlist=["app"]).app, name="simulate")
app.add_typer(topics_app, name="topics")
app.add_typer(policy_app, name="policy")
app.add_typer(report_app, name="report")
app.add_typer(custody_app, name="custody")
agent_app.add_typer(s3_app, name="s3")
cli_fileagent.register(agent_app)
app.add_typer(cli_detect.rules_app, name="rules")
app.command("schema")(cli_schema.schema)
app.add_typer(cli_detect.incident_app, name="incident")
app.add_typer(cli_detect.model_app, name="model")
cli_backup_restore.register(cli_backup.app)
app.add_typer(cli_backup.app, name="backup")
app.add_typer(alerts_app, name="alerts")
app.command("status")(__import__("dataward.cli_status", fromlist=["status"]).status)
app.command("selftest")(__import__("dataward.cli_selftest", fromlist=["selftest"]).selftest)


@app.callback()
def _private_by_default() -> None:
    # Every file a dataward command creates (stores, spools, alerts, tokens) is owner-only.
    from dataward.privacy import private_umask

    private_umask()


@app.command()
def run(
    watch: WatchOpt = None,
    data_dir: DataDirOpt = None,
    alerts_jsonl: Annotated[str | None, typer.Option("--alerts-jsonl", help="Append alerts as JSON lines.")] = None,
    policy: PolicyOpt = None,
    backup_bucket: Annotated[str | None, typer.Option("--backup-bucket", help="Back up what is watched, "
                                                      "continuously, to this versioned S3 bucket; halts on alerts.")]
    = None,
    backup_endpoint_url: Annotated[str | None, typer.Option("--backup-endpoint-url", help="S3 endpoint.")] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Embedded mode: watch directories, detect, store and alert, all in this process."""
    setup_logging(log_level)
    cfg = _config(config, data_dir=data_dir, alerts_jsonl=alerts_jsonl, policy_file=policy,
                  backup__bucket=backup_bucket, backup__endpoint_url=backup_endpoint_url)
    watch = _watch_dirs(watch, cfg)
    serve_metrics(cfg, "run")
    from dataward.console import print_alert
    from dataward.embedded import EmbeddedPipeline

    stop = _stop_on_signals()
    backup = None
    if cfg.backup.bucket:
        from dataward.backup_embedded import EmbeddedBackup

        backup = EmbeddedBackup(cfg, [str(w) for w in watch])
        from dwcore.metrics import BACKUP_HALTED

        gate = backup.parts.gate
        BACKUP_HALTED.set_function(lambda: 1.0 if gate.closed else 0.0)
    pipeline = EmbeddedPipeline(cfg, _policy(cfg), [str(w) for w in watch], on_alert=print_alert, backup=backup)
    from dataward.datadir import DataDirInUse

    try:
        pipeline.start()
        if backup:
            backup.start(pipeline.store)
    except DataDirInUse as exc:  # taken before anything else starts: nothing to stop
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(1) from None
    except Exception:
        pipeline.stop()
        raise
    from dataward.alert_inbox import AlertInbox

    assert pipeline.store is not None
    inbox = AlertInbox(cfg.data_dir, pipeline.store.writer.insert_alerts)  # e.g. a failed `dataward selftest`
    inbox.start()
    _ready(f"watching {', '.join(pipeline.watch)}; query endpoint {pipeline.query_url}"
           + (f"; backup to s3://{cfg.backup.bucket}/{cfg.backup.prefix}" if backup else ""))
    try:
        stop.wait()
    finally:
        inbox.stop()
        if backup:
            backup.stop()
        pipeline.stop()
    out.print(f"stopped: {pipeline.events_processed} events, {pipeline.alerts_raised} alerts")


@agent_app.command("file")
def agent_file(
    watch: WatchOpt = None,
    bootstrap: BootstrapOpt = None,
    topic_prefix: PrefixOpt = None,
    device: Annotated[str | None, typer.Option("--device", help="Agent/device id (default: host name).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Watch directories and publish access events to Kafka (spooled on disk while Kafka is down)."""
    setup_logging(log_level)
    cfg = _config(config, data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix,
                  agent__device=device)
    watch = _watch_dirs(watch, cfg)
    serve_metrics(cfg, "agent")
    from dataward.distributed import run_file_agent
    from dataward.privacy import make_private

    make_private(cfg.data_dir)
    stop = _stop_on_signals()
    run_file_agent(cfg, [str(w) for w in watch], stop, ready=lambda: _ready(f"agent watching {len(watch)} dirs"),
                   policy=_policy(cfg))


@app.command()
def worker(
    bootstrap: BootstrapOpt = None,
    topic_prefix: PrefixOpt = None,
    data_dir: DataDirOpt = None,
    policy: PolicyOpt = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Distributed mode: a faust worker that runs the detectors per user (scale out by partitions)."""
    setup_logging(log_level)
    cfg = _config(config, data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix,
                  policy_file=policy)
    from dataward.distributed import run_worker
    from dwcore.kafkalog import HEALTH

    pol = _policy(cfg)
    serve_metrics(cfg, "worker")
    stop = _stop_on_signals()
    if _wait_for_topics(cfg, stop, "worker not started; detection waits for it") is None:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # faust installs its own handlers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    HEALTH.configure(cfg.kafka.bootstrap, lambda: "worker paused; detection resumes when it answers")
    level = {"warning": "warn", "critical": "crit"}.get(log_level, log_level)
    run_worker(cfg, pol, loglevel=level, ready=lambda: _ready("worker assigned"))


def _wait_for_topics(cfg, stop, waiting: str):
    """The topics, waiting while no broker answers; refused credentials end the command (exit 2)."""
    from dataward.distributed import wait_for_topics
    from dwcore.agents.kafka_admin import CredentialsRefused

    try:
        return wait_for_topics(cfg, stop, waiting)
    except CredentialsRefused as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None


@sink_app.command("clickhouse")
def sink_clickhouse(
    bootstrap: BootstrapOpt = None,
    topic_prefix: PrefixOpt = None,
    data_dir: DataDirOpt = None,
    clickhouse_url: Annotated[str | None, typer.Option("--clickhouse-url", help="Server URL (or CLICKHOUSE_URL); "
                                                       "default: chDB in the data dir.")] = None,
    alerts_jsonl: Annotated[str | None, typer.Option("--alerts-jsonl", help="Also append alerts here.")] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Consume events, alerts and dead letters from Kafka into ClickHouse (forensic history)."""
    setup_logging(log_level)
    cfg = _config(config, data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix,
                  store__url=clickhouse_url, alerts_jsonl=alerts_jsonl)
    from dataward.distributed import run_clickhouse_sink
    from dataward.privacy import make_private

    make_private(cfg.data_dir)
    from dataward.datadir import DataDirInUse

    serve_metrics(cfg, "sink")
    stop = _stop_on_signals()
    if _wait_for_topics(cfg, stop, "sink waiting; nothing is consumed until it answers") is None:
        return
    try:
        run_clickhouse_sink(cfg, stop, ready=lambda: _ready("clickhouse sink consuming"))
    except DataDirInUse as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(1) from None


@topics_app.command("create")
def topics_create(bootstrap: BootstrapOpt = None, topic_prefix: PrefixOpt = None, config: ConfigOpt = None) -> None:
    """Create the dw.* topics (idempotent)."""
    setup_logging("warning")
    cfg = _config(config, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix)
    from dataward.distributed import ensure_all_topics
    from dwcore.agents.kafka_admin import BrokerUnreachable

    try:
        durability = ensure_all_topics(cfg)
    except BrokerUnreachable as exc:
        err.print(f"[red]cannot create topics:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    out.print(f"topics ready: {durability.describe()}")


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="Read-only SQL, e.g. \"SELECT count() FROM events\".")],
    data_dir: DataDirOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json, jsonl, csv, tsv or vertical.")] = "table",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value for {name:Type}.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Read-only SQL against the forensic store (works while `dataward run` owns it)."""
    setup_logging("warning")
    from dataward.report_output import FormatError, check_format

    try:
        check_format(fmt)
    except FormatError as exc:
        raise typer.BadParameter(str(exc)) from None
    cfg = _config(config, data_dir=data_dir)
    from dwcore.sinks.query_client import run_query

    bad = [p for p in (param or []) if "=" not in p]
    if bad:
        err.print(f"[red]--param needs name=value:[/red] {escape(', '.join(bad))} "
                  "(e.g. -p user=alice for {user:String})")
        raise typer.Exit(2)
    params = dict(p.split("=", 1) for p in (param or []))
    try:
        result = run_query(sql, params or None, dsn=cfg.store_dsn, database=cfg.store.database,
                           addr_file=cfg.query_addr_file)
    except Exception as exc:  # the store's own message is the useful part for an analyst
        err.print(f"[red]query failed:[/red] {exc}")
        raise typer.Exit(1) from None
    from dataward.report_output import show_table
    from dwcore.sinks.reports import Table as ReportTable

    show_table(out, sys.stdout, ReportTable("query", result.columns, result.rows), fmt)


@policy_app.command("check")
def policy_check(path: Annotated[Path, typer.Argument(help="Policy YAML file.")]) -> None:
    """Validate a policy file (same as `dataward rules check`)."""
    cli_detect.check_policy_file(path)


def _version(value: bool) -> None:
    if value:
        from dataward import __version__

        out.print(f"dataward {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """dataward: data-layer security pipeline."""


def main() -> None:
    from dwcore.extras import MissingExtra

    try:
        app()
    except MissingExtra as exc:  # an optional part of the install is missing: say which, no traceback
        err.print(f"[red]not installed:[/red] {escape(str(exc))}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
