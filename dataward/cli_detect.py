"""`dataward rules ...`, `dataward incident ...`, `dataward model ...`: detection from the command line."""
from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from dwcore.schemas.alert import Alert

rules_app = typer.Typer(no_args_is_help=True, help="Detection rules (policy YAML).")
incident_app = typer.Typer(no_args_is_help=True, help="Incidents: the alerts of one user's activity.")
model_app = typer.Typer(no_args_is_help=True, help="Learned baselines (scikit-learn IsolationForest).")

out = Console()
err = Console(stderr=True)


def check_policy_file(path: Path) -> None:
    """Validate a policy file against the built-in rules; print every problem with file:line."""
    from dwcore.detectors.policy import PolicyError, load_policy

    try:
        pol = load_policy(path)
    except PolicyError as exc:
        for file, line, problem in exc.problems:
            err.print(f"[red]{file}:{line}: {problem}[/red]" if line else f"[red]{file}: {problem}[/red]",
                      markup=True, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}")
        raise typer.Exit(2) from None
    table = Table("rule", "level", "signal", "threshold", "window_s", "critical_at", "enabled")
    for rule in pol.rules:
        table.add_row(rule.name, rule.level, rule.signal or "(code)", str(rule.threshold), f"{rule.window_s:g}",
                      str(rule.critical_at or ""), str(rule.enabled))
    out.print(table)
    extra = []
    if pol.overrides:
        extra.append(f"{len(pol.overrides)} overrides")
    if pol.allow:
        extra.append(f"{len(pol.allow)} allow entries")
    if pol.groups:
        extra.append(f"{len(pol.groups)} groups")
    out.print("ok" + (f" ({', '.join(extra)})" if extra else ""))


@rules_app.command("check")
def rules_check(path: Annotated[Path, typer.Argument(help="Policy YAML file.")]) -> None:
    """Validate a policy file; every problem is reported at once, each with file:line."""
    check_policy_file(path)


@incident_app.command("resolve")
def incident_resolve(
    uid: Annotated[str, typer.Argument(help="Incident id (the alert uid).")],
    by: Annotated[str | None, typer.Option("--by", help="Who resolves it (default: your login name).")] = None,
    note: Annotated[str, typer.Option("--note", help="Why, for the record.")] = "",
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="State directory (chDB store).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
) -> None:
    """Mark an incident resolved: a new alert version with status=resolved, and who did it."""
    import msgspec

    from dataward.cli_common import load_cli_config as _config
    from dwcore.schemas.alert import Alert, IncidentAction
    from dwcore.sinks.store import Store

    cfg = _config(config, data_dir=data_dir)
    actor = by or getpass.getuser()
    try:
        store = Store.open(cfg.store_dsn, cfg.store.database, cfg.store.retention_days)
    except Exception as exc:  # the store's own message says why (e.g. the data dir is in use)
        err.print(f"[red]cannot open the store:[/red] {exc}")
        raise typer.Exit(1) from None
    try:
        store.writer.ensure_schema()
        found = store.reader.query(
            # The database name is a checked identifier (Store refuses others); the uid is a parameter.
            f"SELECT * FROM `{store.database}`.alerts WHERE uid = {{uid:String}} "  # noqa: S608
            "ORDER BY version DESC LIMIT 1",
            {"uid": uid},
        )
        if not found.rows:
            err.print(f"[red]no incident {uid}[/red]")
            raise typer.Exit(1)
        row = dict(zip(found.columns, found.rows[0], strict=True))
        latest = _alert_from_row(row)
        if latest.status == "resolved":
            out.print(f"incident {uid} was already resolved (version {latest.version})")
            return
        now = int(time.time() * 1000)
        resolved = msgspec.structs.replace(latest, version=latest.version + 1, status="resolved",
                                           description=latest.description + f" Resolved by {actor}."
                                           + (f" {note}" if note else ""))
        store.writer.insert_alerts([resolved])
        action = IncidentAction(uid=uid, time=now, action="resolved", actor=actor, note=note,
                                version=resolved.version)
        store.writer.insert_incident_actions([action])
        # The resolved version reaches the pager too (PagerDuty: a resolve for the incident's dedup_key).
        from dataward.alerting import announce

        try:
            writer = store.writer
            where = announce(cfg, [resolved], record=writer.insert_deliveries)
            out.print(f"resolved version sent to {where}")
        except Exception as exc:  # recorded in the store already; delivery is best told, not fatal
            err.print(f"[yellow]resolved version not delivered:[/yellow] {exc}")
    finally:
        store.close()
    assert isinstance(resolved, Alert)
    out.print(f"incident {uid} resolved by {actor} (version {resolved.version})")


def _alert_from_row(row: dict) -> Alert:
    """An Alert from a row of the alerts table (times come back as text or datetimes)."""
    import msgspec

    from dwcore.schemas.alert import Alert

    def ms(v: object) -> int:
        if isinstance(v, int | float):
            return int(v)
        from datetime import UTC, datetime

        text = str(v).replace(" ", "T")
        dt = datetime.fromisoformat(text)
        return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)

    for key in ("first_seen", "detected_at", "last_seen"):
        row[key] = ms(row[key])
    row["evidences"] = [dict(e) if isinstance(e, dict) else e for e in row.get("evidences", [])]
    return msgspec.convert(row, Alert, strict=False)


@model_app.command("train")
def model_train(
    days: Annotated[int, typer.Option("--days", help="Training window: the last N days of history.")] = 30,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="State directory (chDB store).")] = None,
    models_dir: Annotated[Path | None, typer.Option("--models-dir", help="Where models go "
                                                    "(default: <data_dir>/models).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
) -> None:
    """Train per-user and per-group IsolationForest baselines from the event history."""
    from dataward.cli_common import load_cli_config as _config
    from dataward.cli_common import load_cli_policy as _policy
    from dataward.model_train import train_models

    cfg = _config(config, data_dir=data_dir)
    target = models_dir or cfg.models_dir
    try:
        train_models(cfg, _policy(cfg), days, target, out)
    except Exception as exc:  # the store's message says what is missing
        err.print(f"[red]training failed:[/red] {exc}")
        raise typer.Exit(1) from None
