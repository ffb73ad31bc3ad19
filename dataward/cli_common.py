"""What every `dataward` sub-command shares: consoles, common options, config and policy loading."""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from dataward.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from dwcore.detectors.policy import Policy

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (or DATAWARD_CONFIG).")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="State directory (chDB store, spool).")]
BootstrapOpt = Annotated[str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers (or KAFKA_BOOTSTRAP).")]
PrefixOpt = Annotated[str | None, typer.Option("--topic-prefix", help="Prefix for all dw.* topics.")]
PolicyOpt = Annotated[str | None, typer.Option("--policy", help="Detection policy YAML (default: built in).")]
LogOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")]
WatchOpt = Annotated[list[Path] | None, typer.Option("--watch", "-w", help="Directory to watch (repeatable; "
                                                     "default: agent.watch of the config).", show_default=False)]


def load_cli_config(config: Path | None, **overrides: Any) -> Config:
    """The config file and environment, with command-line flags on top; exit 2 with the reason if invalid.

    A flag named `section__field` overrides `section.field`; flags left at None are not given."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, field = key.partition("__")
        if field:
            nested.setdefault(section, {})[field] = value
        else:
            nested[key] = value
    try:
        return load_config(config, nested)
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def watch_dirs(watch: list[Path] | None, cfg: Config) -> list[Path]:
    """--watch, else the config's agent.watch; each must be a directory (exit 2 with the reason)."""
    from rich.markup import escape

    dirs = list(watch or []) or [Path(w) for w in cfg.agent.watch]
    if not dirs:
        err.print("[red]nothing to watch:[/red] pass --watch DIR or set agent.watch in the config "
                  "(DATAWARD_AGENT_WATCH=/srv/a,/srv/b)")
        raise typer.Exit(2)
    missing = [str(w) for w in dirs if not w.is_dir()]
    if missing:
        err.print(f"[red]not a directory:[/red] {escape(', '.join(missing))}")
        raise typer.Exit(2)
    return dirs


def load_cli_policy(cfg: Config) -> Policy:
    """The detection policy of this config (the backup buckets get the strict S3 rule); exit 2 if invalid."""
    from dwcore.detectors.policy import PolicyError, load_policy

    overrides = {}
    if cfg.s3.protected_buckets:
        overrides["s3_protected_bucket"] = {"enabled": True, "buckets": list(cfg.s3.protected_buckets)}
    try:
        return load_policy(cfg.policy_file or None, overrides)
    except PolicyError as exc:
        err.print(f"[red]policy error:[/red] {exc}")
        raise typer.Exit(2) from None


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so long-running commands stop cleanly and flush."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def serve_metrics(cfg: Config, process: str) -> None:
    """Prometheus /metrics of this process on metrics.host:metrics.<process>_port (0 = off)."""
    from dwcore.metrics import serve

    port = getattr(cfg.metrics, f"{process}_port")
    try:
        serve(cfg.metrics.host, port)
    except OSError as exc:
        err.print(f"[red]metrics port {cfg.metrics.host}:{port} ({process}):[/red] {exc}")
        raise typer.Exit(2) from None


def ready(what: str) -> None:
    # Scripts and tests wait for this exact word on stdout.
    print(f"ready: {what}", flush=True)
