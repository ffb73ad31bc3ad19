"""`dataward report ...`: the questions a SOC analyst asks after an alert, one command each.

Wiring only: parse flags, pick the read path from the configuration, call ``sinks.reports`` /
``sinks.blast_radius``, print with ``report_output``.
"""
from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dataward.cli_common import ConfigOpt
from dataward.config import Config

report_app = typer.Typer(no_args_is_help=True, help="Analyst reports over the forensic history (read-only).")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="State directory (chDB store).")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table, json, jsonl, csv, tsv or vertical.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="From: 2026-11-28, '2026-11-28 10:00', 2h, 7d (UTC).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Until (exclusive), same forms as --since.")]

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration_s(text: str) -> int:
    """'90s', '5m', '2h', '7d', '1w' or plain seconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    found = _AGO.match(text)
    if not found:
        raise typer.BadParameter(f"{text!r}: use e.g. 90s, 5m, 2h, 7d")
    return int(float(found.group(1)) * _UNIT_S[found.group(2)])


def parse_time_ms(text: str | None, now_ms: int) -> int | None:
    """An absolute time (ISO 8601; without a zone it is UTC) or a duration ago ('2h')."""
    if text is None:
        return None
    text = text.strip()
    if text == "now":
        return now_ms
    if _AGO.match(text):
        return now_ms - parse_duration_s(text) * 1000
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use 2026-11-28, '2026-11-28 10:00:00', 2026-11-28T10:00Z or 2h") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _cfg(config: Path | None, data_dir: str | None) -> Config:
    from dataward.cli_common import load_cli_config as _config

    return _config(config, data_dir=data_dir)


def _runner(cfg: Config):
    from dwcore.sinks.query_client import run_query

    def run(sql: str, params: Any) -> Any:
        return run_query(sql, params, dsn=cfg.store_dsn, database=cfg.store.database, addr_file=cfg.query_addr_file)

    return run


def _check(fmt: str) -> None:
    from dataward.report_output import FormatError, check_format

    try:
        check_format(fmt)
    except FormatError as exc:
        raise typer.BadParameter(str(exc)) from None


def _show(report: Any, fmt: str) -> None:
    from dataward.report_output import show_report

    show_report(out, sys.stdout, report, fmt)


def _fail(exc: Exception) -> typer.Exit:
    from dataward.console import inert

    err.print(f"report failed: {inert(exc)}", markup=False)
    return typer.Exit(1)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _report(fmt: str, config: Path | None, data_dir: str | None, build: Callable[[Any], Any]) -> Any:
    """Check the format, run `build` over the store's query runner and print what it returns."""
    _check(fmt)
    run = _runner(_cfg(config, data_dir))
    try:
        report = build(run)
    except typer.BadParameter:
        raise
    except Exception as exc:  # the store's own message is what helps the analyst
        raise _fail(exc) from None
    _show(report, fmt)
    return report


@report_app.command("custody")
def custody_cmd(
    path: Annotated[str, typer.Argument(help="A path, or a prefix: everything under it.")],
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many events.")] = 10_000,
    fmt: FormatOpt = "table",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Chain of custody: every access to PATH (or under it), by whom, from where, in order."""
    from dwcore.sinks.reports import custody

    now = _now_ms()
    _report(fmt, config, data_dir,
            lambda run: custody(run, path, parse_time_ms(since, now), parse_time_ms(until, now), limit))


@report_app.command("who-changed")
def who_changed_cmd(
    prefix: Annotated[str, typer.Argument(help="A path or prefix.")],
    since: SinceOpt = None,
    until: UntilOpt = None,
    fmt: FormatOpt = "table",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Who changed data under PREFIX: per user, changes, files, activities, devices, first and last."""
    from dwcore.sinks.reports import who_changed

    now = _now_ms()
    _report(fmt, config, data_dir,
            lambda run: who_changed(run, prefix, parse_time_ms(since, now), parse_time_ms(until, now)))


@report_app.command("timeline")
def timeline_cmd(
    user: Annotated[str, typer.Option("--user", "-u", help="The user whose activity to show.")],
    around: Annotated[str | None, typer.Option("--around", help="An incident uid: its span and --window around it.")]
    = None,
    window: Annotated[str, typer.Option("--window", help="With --around: how much before and after.")] = "15m",
    since: SinceOpt = None,
    until: UntilOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also draw it into this PNG (needs the plot extra).")]
    = None,
    fmt: FormatOpt = "table",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """One user's activity per minute by activity, with the alerts raised about them."""
    from dwcore.sinks.reports import incident_alert, timeline

    now = _now_ms()

    def build(run: Any) -> Any:
        start, end = parse_time_ms(since, now), parse_time_ms(until, now)
        if around:
            alert = incident_alert(run, around)
            pad = parse_duration_s(window) * 1000
            start, end = int(alert["first_ms"]) - pad, int(alert["last_ms"]) + pad
        return timeline(run, user, start, end)

    report = _report(fmt, config, data_dir, build)
    if plot is not None:
        from dataward.report_plot import plot_timeline

        try:
            plot_timeline(report, plot)
        except ImportError as exc:
            err.print(str(exc), markup=False)
            raise typer.Exit(2) from None
        err.print(f"plot written to {plot}", markup=False)


@report_app.command("incident")
def incident_cmd(
    incident: Annotated[str, typer.Argument(help="The incident (alert) uid.")],
    before: Annotated[str, typer.Option("--before", help="Also include this long before its first event: 5m.")]
    = "0s",
    events: Annotated[bool, typer.Option("--events", help="Also list every event in that span.")] = False,
    restore_list: Annotated[Path | None, typer.Option("--restore-list", help="Write the files to restore here, "
                                                      "one per line (for backup restore).")] = None,
    fmt: FormatOpt = "table",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Blast radius: files, directories, hosts, bytes, first/last event, rules fired, files to restore."""
    from dwcore.sinks import blast_radius

    report = _report(fmt, config, data_dir,
                     lambda run: blast_radius.incident(run, incident, parse_duration_s(before), with_events=events))
    if restore_list is not None:
        paths = [row[0] for row in report.main.rows]
        # NUL-free by the event contract; newlines in names would break a line list, so refuse them.
        if any("\n" in p for p in paths):
            err.print("a path contains a newline: use --format json for the exact list", markup=False)
            raise typer.Exit(1)
        restore_list.write_text("".join(p + "\n" for p in paths), encoding="utf-8", errors="surrogateescape")
        err.print(f"{len(paths)} paths written to {restore_list}", markup=False)


@report_app.command("inventory")
def inventory_cmd(
    root: Annotated[str | None, typer.Option("--root", help="Only this scanned root.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    fmt: FormatOpt = "table",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The newest inventory scan: files and bytes by owner, type and age (share of bytes, average age)."""
    from dwcore.sinks.reports import inventory

    _report(fmt, config, data_dir, lambda run: inventory(run, root, device))
