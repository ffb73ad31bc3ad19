"""`dataward selftest DIR`: the daily fire drill (docs/operations.md): pass/fail per stage with
timings, stored in <data_dir>/selftest.jsonl, a real alert when it fails (also when the pipeline's
store does not answer at all). Exit 0 pass, 1 fail, 2 no such directory."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dataward.console import inert, inert_text
from dataward.logs import setup_logging

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def selftest(
    directory: Annotated[Path, typer.Argument(help="A dedicated directory inside the watched tree; the drill "
                                              "writes only in a fresh .dataward-drill-<id> inside it and removes it.")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for the whole chain to answer.")] = 60.0,
    files: Annotated[int, typer.Option("--files", "-n", min=30, help="Files in the drill's rename burst.")] = 100,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="State directory of the running `dataward "
                                                 "run` or ClickHouse sink; the result is appended to "
                                                 "<data-dir>/selftest.jsonl.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="Where a failure alert is stored: embedded (the inbox "
                                      "of the `dataward run` owning --data-dir), distributed (dw.alerts, stored by "
                                      "the sink) or auto (embedded when --data-dir holds a run's write-ahead "
                                      "log).")] = "auto",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (or DATAWARD_CONFIG).")]
    = None,
) -> None:
    """Daily fire drill: agent -> detection -> alert delivery -> backup halt (dry run), timed; alerts if it fails."""
    setup_logging("warning")
    if fmt not in ("table", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}: use table or json")
    if mode not in ("auto", "embedded", "distributed"):
        raise typer.BadParameter(f"unknown mode {mode!r}: use auto, embedded or distributed")
    if not directory.is_dir():
        err.print(Text(f"not a directory: {inert(directory)}", style="red"))
        raise typer.Exit(2)
    from dataward.cli_common import load_cli_config as _config
    from dataward.selftest import (
        deliver_directly,
        failure_alert,
        raise_failure,
        resolve_mode,
        run_selftest,
        store_failure,
        store_result,
    )

    cfg = _config(config, data_dir=data_dir)
    result = run_selftest(cfg, directory, timeout, files)
    if not result.passed:
        alert = failure_alert(result, int(time.time() * 1000))
        result = msgspec.structs.replace(result, failure_alert_uid=alert.uid)
        used = resolve_mode(cfg, mode)
        handed, where = store_failure(cfg, alert, used)
        direct = deliver_directly(result, used, handed)
        sent = raise_failure(cfg, alert, deliver=direct)
        err.print(Text(f"self-test FAILED: alert {alert.uid} raised to "
                       + (f"{sent} destination(s)" if direct else "the deliverer")
                       + (" and the alerts JSONL file" if cfg.alerts_jsonl else "")
                       + (f"; for the store: {where}" if handed else f"; NOT stored: {where}"), style="bold red"))
    path = store_result(cfg, result)
    if fmt == "json":
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        table = Table(title=f"self-test {result.run_id} in {inert(result.directory)}", title_justify="left")
        for name in ("stage", "result", "seconds", "detail"):
            table.add_column(name, overflow="fold")
        for s in result.stages:
            table.add_row(s.name, Text(s.status.upper(), style=_STYLE.get(s.status, "")),
                          "" if s.seconds is None else f"{s.seconds:.2f}", inert_text(s.detail))
        out.print(table)
        verdict = Text("PASSED" if result.passed else "FAILED", style="bold green" if result.passed else "bold red")
        out.print(Text("self-test ").append(verdict).append(f"; recorded in {inert(path)}"))
    raise typer.Exit(0 if result.passed else 1)
