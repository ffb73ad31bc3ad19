"""`dataward alerts ...`: verify a signed webhook, send a test, run the distributed deliverer."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dataward.cli_common import ConfigOpt, err, out
from dataward.cli_common import load_cli_config as _load
from dataward.config import ConfigError
from dataward.logs import setup_logging

app = typer.Typer(no_args_is_help=True, help="Alert delivery: Slack, Teams, PagerDuty, signed webhooks.")


# Exit codes of `alerts verify`, for scripts.
VERIFY_OK, VERIFY_BAD_SIGNATURE, VERIFY_USAGE, VERIFY_STALE = 0, 1, 2, 3


@app.command()
def verify(
    body: Annotated[Path, typer.Option("--body", help="The received request body, byte for byte ('-': stdin).")],
    headers: Annotated[Path | None, typer.Option("--headers", help="File of 'Name: value' lines (curl -D).")] = None,
    msg_id: Annotated[str | None, typer.Option("--id", help="webhook-id header.")] = None,
    timestamp: Annotated[str | None, typer.Option("--timestamp", help="webhook-timestamp header.")] = None,
    signature: Annotated[str | None, typer.Option("--signature", help="webhook-signature header.")] = None,
    secret_file: Annotated[Path | None, typer.Option("--secret-file", help="whsec_ secret (or "
                                                     "DATAWARD_WEBHOOK_SECRET).")] = None,
    destination: Annotated[str | None, typer.Option("--destination", help="Use this configured webhook's "
                                                    "secret.")] = None,
    tolerance: Annotated[int, typer.Option("--tolerance", help="Max age of webhook-timestamp, seconds.")] = 300,
    config: ConfigOpt = None,
) -> None:
    """Check a received webhook: exit 0 authentic, 1 bad signature, 2 usage error, 3 stale timestamp."""
    from dwcore.sinks.signing import SignatureError, parse_header_lines, secret_key
    from dwcore.sinks.signing import verify as check

    secret = os.environ.get("DATAWARD_WEBHOOK_SECRET", "")
    try:
        if secret_file:
            secret = secret_file.read_text().strip()
        elif destination:
            from dataward.alerting import destinations

            cfg = _load(config)
            found = [d for d in destinations(cfg) if d.name == destination and d.kind == "webhook"]
            if not found:
                err.print(f"[red]no webhook destination named {destination!r} in the configuration[/red]")
                raise typer.Exit(VERIFY_USAGE)
            secret = found[0].secret
        raw = sys.stdin.buffer.read() if str(body) == "-" else body.read_bytes()
        hdrs = parse_header_lines(headers.read_text()) if headers else {}
    except (OSError, ConfigError) as exc:
        err.print(f"[red]cannot read input:[/red] {exc}")
        raise typer.Exit(VERIFY_USAGE) from None
    for name, value in (("webhook-id", msg_id), ("webhook-timestamp", timestamp), ("webhook-signature", signature)):
        if value is not None:
            hdrs[name] = value
    if not secret:
        err.print("[red]no secret:[/red] give --secret-file, --destination or DATAWARD_WEBHOOK_SECRET")
        raise typer.Exit(VERIFY_USAGE)
    try:
        got = check(secret_key(secret), hdrs, raw, now_s=time.time(), tolerance_s=tolerance)
    except SignatureError as exc:
        err.print(f"[red]not verified ({exc.kind}):[/red] {exc}")
        code = {"signature": VERIFY_BAD_SIGNATURE, "timestamp": VERIFY_STALE}.get(exc.kind, VERIFY_USAGE)
        raise typer.Exit(code) from None
    out.print(f"verified: webhook-id {got}")


@app.command("test")
def send_test(
    name: Annotated[str, typer.Argument(help="A destination name from the configuration.")],
    severity: Annotated[str, typer.Option("--severity", help="Severity of the sample alert.")] = "low",
    config: ConfigOpt = None,
) -> None:
    """Send a sample alert, clearly marked as a test, to one destination now (filters bypassed)."""
    setup_logging("warning")
    from dataward.alerting import destinations
    from dwcore.sinks.alert_formats import sample_alert
    from dwcore.sinks.deliverer import send_once

    cfg = _load(config)
    try:
        dests = {d.name: d for d in destinations(cfg)}
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    if name not in dests:
        err.print(f"[red]no destination named {name!r}[/red] (configured: {', '.join(dests) or 'none'})")
        raise typer.Exit(2)
    dest = dests[name]
    alert = sample_alert(int(time.time() * 1000), severity)
    result = send_once(dest, [alert], 1, int(time.time() * 1000))
    table = Table("destination", "kind", "message id", "status", "latency ms", "outcome", "error")
    r = result.response
    table.add_row(dest.name, dest.kind, result.msg_id, str(r.status), f"{r.latency_ms:.0f}", result.outcome,
                  result.error)
    out.print(table)
    if result.outcome != "delivered":
        raise typer.Exit(1)


@app.command()
def deliver(
    bootstrap: Annotated[str | None, typer.Option("--bootstrap", help="Kafka bootstrap (or KAFKA_BOOTSTRAP).")] = None,
    topic_prefix: Annotated[str | None, typer.Option("--topic-prefix", help="Prefix for all dw.* topics.")] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Holds the outbox (and chDB by default).")] = None,
    clickhouse_url: Annotated[str | None, typer.Option("--clickhouse-url", help="Where delivery attempts are "
                                                       "recorded (default: chDB in the data dir).")] = None,
    config: ConfigOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Distributed mode: consume dw.alerts and deliver to the configured destinations (scale by group)."""
    setup_logging(log_level)
    cfg = _load(config, data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix,
                store__url=clickhouse_url)
    from dataward.alerting import destinations, run_alert_deliverer
    from dataward.cli_common import ready as _ready
    from dataward.cli_common import stop_on_signals as _stop_on_signals

    try:
        names = ", ".join(d.name for d in destinations(cfg))
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    if not names:
        err.print("[red]no alert destinations configured[/red] (alerts: destinations: in the config file)")
        raise typer.Exit(2)
    from dataward.datadir import DataDirInUse

    stop = _stop_on_signals()
    try:
        n = run_alert_deliverer(cfg, stop, ready=lambda: _ready(f"delivering alerts to {names}"))
    except DataDirInUse as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(1) from None
    out.print(f"stopped: {n} alerts queued for delivery")
