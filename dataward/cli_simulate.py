"""`dataward simulate ...`: a drill that proves detection on a running pipeline (docs/operations.md).

Each run writes only in a fresh ``.dataward-drill-<run id>`` directory inside DIR, waits for the
drill's alert in the store and exits 1 without one; the directory is removed in every case.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from dataward.console import inert
from dataward.logs import setup_logging

app = typer.Typer(no_args_is_help=True, help="Drills: harmless simulated attacks that must be detected "
                  "(tagged as drills: stored and shown, never paged).")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DirArg = Annotated[Path, typer.Argument(help="A watched directory (the drill writes only in a fresh "
                                        ".dataward-drill-<id> directory inside it, removed afterwards).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (or DATAWARD_CONFIG).")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="State directory of the running `dataward "
                                                "run` or ClickHouse sink (where its query endpoint is).")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the drill's alert.")]
ExitNoAlert, ExitUsage = 1, 2


def _config(config: Path | None, **overrides: Any):
    from dataward.cli_common import load_cli_config

    return load_cli_config(config, **overrides)


def _store(cfg):
    from dataward.simulate import DrillStore, NoStore
    from dwcore.sinks.errors import StoreError

    store = DrillStore(cfg)
    try:
        store.check()
    except (NoStore, StoreError) as exc:
        err.print(Text(f"cannot run a drill: {inert(exc)}", style="red"))
        raise typer.Exit(ExitUsage) from None
    return store


def _wait(store, run_id: str, started: float, timeout: float, what: str) -> None:
    from dataward.simulate import poll

    found = poll(lambda: store.alert(run_id), timeout)
    if found is None:
        events = poll(lambda: store.events(run_id), 0)
        hint = (f"{events} of its events reached the store, so detection did not fire" if events
                else "none of its events reached the store: is the directory watched?")
        err.print(Text(f"FAILED: no drill alert within {timeout:g} s after the {what}; {hint}", style="bold red"))
        raise typer.Exit(ExitNoAlert)
    elapsed = time.monotonic() - started
    out.print(Text(f"drill detected: {inert(found.severity)} {inert(found.rule)} alert {inert(found.uid)} "
                   f"for user {inert(found.user)}, {found.file_count} files, {elapsed:.2f} s after the "
                   f"{what} began; tagged as a drill, nobody paged", style="green"))


def _begin(directory: Path) -> None:
    setup_logging("warning")
    if not directory.is_dir():
        err.print(Text(f"not a directory: {inert(directory)}", style="red"))
        raise typer.Exit(ExitUsage)


@app.command("rename")
def rename(
    directory: DirArg,
    files: Annotated[int, typer.Option("--files", "-n", min=1, help="Files to create and rename.")] = 300,
    extension: Annotated[str, typer.Option("--ext", help="Ransomware-style extension to rename to.")] = ".locked",
    timeout: TimeoutOpt = 60.0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Mass-rename drill: create N files, rename each to *.locked, wait for the alert, clean up."""
    _begin(directory)
    from dataward.simulate import drill_directory, new_run_id, simulate_rename, sweep_stale

    store = _store(_config(config, data_dir=data_dir))
    sweep_stale(directory)
    run_id = new_run_id()
    with drill_directory(directory, run_id) as target:
        started = time.monotonic()
        simulate_rename(directory, files, extension, target=target)
        _wait(store, run_id, started, timeout, f"{files}-file rename burst")
    out.print(Text(f"removed {inert(target)}"))


@app.command("delete")
def delete(
    directory: DirArg,
    files: Annotated[int, typer.Option("--files", "-n", min=1, help="Victim files.")] = 300,
    prepare: Annotated[bool, typer.Option("--prepare", help="Only create the victim files and exit (run this "
                                          "first: deleting files just created is churn, not an attack).")] = False,
    timeout: TimeoutOpt = 60.0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Bulk-delete drill: delete the files `--prepare` created earlier, wait for the alert, clean up."""
    _begin(directory)
    from dataward.simulate import drill_directory, drill_dirs, new_run_id, removing, simulate_delete

    if prepare:
        run_id = new_run_id()
        with drill_directory(directory, run_id, keep=True) as target:
            n = simulate_delete(directory, files, prepare=True, target=target)
        out.print(Text(f"prepared {n} files under {inert(target)}; run `dataward simulate delete` "
                       "once they are long-lived (policy settings.churn_s) or after a restart"))
        return
    prepared = [d for d in drill_dirs(directory) if any(d.glob("victim-*.bin"))]
    if not prepared:
        err.print(Text("nothing prepared: run `dataward simulate delete --prepare DIR` first", style="red"))
        raise typer.Exit(ExitUsage)
    store = _store(_config(config, data_dir=data_dir))
    target = max(prepared, key=lambda d: d.stat().st_mtime)
    run_id = target.name.rsplit("-", 1)[1]
    with removing(target):
        started = time.monotonic()
        simulate_delete(directory, files, target=target)
        _wait(store, run_id, started, timeout, f"{files}-file delete burst")
    out.print(Text(f"removed {inert(target)}"))

