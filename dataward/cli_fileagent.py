"""`dataward agent audit|canary|inventory ...`: the file-server agent's admin commands."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

audit_app = typer.Typer(no_args_is_help=True, help="Check audit logs (auditd, Samba full_audit) before wiring them.")
err = Console(stderr=True)


def register(agent_app: typer.Typer) -> None:
    """Adds this module's commands under `dataward agent`."""
    agent_app.add_typer(audit_app, name="audit")


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
