"""What every benchmark shares: the result record, the table, the JSON file, the synthetic events.

A benchmark is only meaningful next to a baseline measured in the same run on the same machine,
so every result carries its ratio to the baseline of its group.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dwcore.schemas.event import AccessEvent, Activity, make_event

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / ".cache" / "bench"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, so runs are comparable
BURST_USER = "mallory"
LOCKBIT_FILES_PER_S = 420  # ~25,000 files/min (ARCHITECTURE.md section 5)

Extra = dict[str, float | int | str]


class Result(msgspec.Struct, kw_only=True):
    bench: str
    name: str
    count: int  # rows, events or runs
    seconds: float
    rate: float | None  # per second; None where a rate means nothing (latency)
    ratio: float | None = None  # against the group's baseline; how it is computed is per bench
    baseline: bool = False
    extra: Extra = {}
    samples: list[float] = []  # per-run values where a row summarises several runs (JSON only)


def timed_result(bench: str, name: str, count: int, seconds: float, *, baseline: bool = False,
                 extra: Extra | None = None) -> Result:
    return Result(bench=bench, name=name, count=count, seconds=seconds,
                  rate=count / seconds if seconds > 0 else None, baseline=baseline, extra=extra or {})


def with_rate_ratios(results: list[Result]) -> list[Result]:
    """Throughput ratio to the baseline (higher is better): 0.5 means half the baseline's rate."""
    base = next((r for r in results if r.baseline), None)
    if base is None or not base.rate:
        return results
    for r in results:
        r.ratio = r.rate / base.rate if r.rate else None
    return results


def _fmt(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def render(console: Console, title: str, results: Sequence[Result], *, count_label: str = "events",
           seconds_label: str = "seconds", rate_label: str | None = "rate/s", ratio_label: str = "vs baseline",
           note: str = "") -> None:
    table = Table(title=title, title_justify="left", caption=note or None, caption_justify="left")
    extra_cols: list[str] = []
    for r in results:
        extra_cols.extend(k for k in r.extra if k not in extra_cols)
    table.add_column("name", style="bold", no_wrap=True)
    labels = (count_label, seconds_label, *([rate_label] if rate_label else []), ratio_label, *extra_cols)
    for label in labels:
        table.add_column(label, justify="right")
    for r in results:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        name = f"{r.name} [dim](baseline)[/]" if r.baseline else r.name
        rate = [_fmt(r.rate)] if rate_label else []
        table.add_row(name, _fmt(r.count), _fmt(r.seconds), *rate, ratio,
                      *(_fmt(r.extra.get(k)) for k in extra_cols))
    console.print(table)


def machine() -> dict[str, str | int]:
    def cpu_model() -> str:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or "unknown"

    def mem_total() -> str:
        try:
            return subprocess.run(["free", "-h"], capture_output=True, text=True, timeout=5).stdout.splitlines()[1]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    return {"cpus": os.cpu_count() or 0, "cpu_model": cpu_model(), "memory": " ".join(mem_total().split()),
            "python": platform.python_version(), "kernel": platform.release()}


def save(results: Sequence[Result], name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
           "results": [msgspec.to_builtins(r) for r in results]}
    path.write_bytes(msgspec.json.format(msgspec.json.encode(doc)))
    return path


def parser(description: str, default_events: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--events", type=int, default=default_events, help=f"events per run (default {default_events:,})")
    p.add_argument("-v", "--verbose", action="store_true", help="show INFO logs of the code under test")
    return p


def setup_logging(verbose: bool) -> None:
    # The code under test logs every alert at WARNING; in a benchmark that is noise over the tables.
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def make_workload(n: int, users: int = 50, burst_share: float = 0.02, seed: int = 7) -> list[AccessEvent]:
    """``n`` events of ``users`` users in time order: mixed create/update/rename/delete spread over
    hours (no user anywhere near a threshold), plus one user (``mallory``) renaming files to
    .locked at LockBit speed in the middle: the one burst the detectors must find."""
    rng = random.Random(seed)
    burst = int(n * burst_share)
    normal = n - burst
    names = [f"user{u:02d}" for u in range(users - 1)]
    step_ms = 144  # 200k events over 8 hours: a user acts every ~7 s on average
    uid = rng.getrandbits
    acts = (Activity.CREATE,) * 35 + (Activity.UPDATE,) * 45 + (Activity.RENAME,) * 10 + (Activity.DELETE,) * 10
    out: list[AccessEvent] = []
    for i in range(normal):
        user = names[rng.randrange(len(names))]
        act = acts[rng.randrange(100)]
        path = f"/srv/share{i % 4}/{user}/project{i % 97}/report-{i:07d}.docx"
        out.append(make_event(
            act, uid=f"{uid(128):032x}", time=START_MS + i * step_ms, user_name=user, user_uid=str(1000 + i % users),
            device=f"fs{i % 3}", share=f"share{i % 4}", file_path=path,
            file_new_path=path + ".old" if act == Activity.RENAME else None,
            file_size=rng.randrange(1, 1 << 20) if act in (Activity.CREATE, Activity.UPDATE) else None,
            bytes_written=rng.randrange(1, 1 << 16) if act == Activity.UPDATE else None,
        ))
    burst_start = START_MS + (normal // 2) * step_ms
    for j in range(burst):
        path = f"/srv/share0/finance/q{j % 4}/ledger-{j:06d}.xlsx"
        out.append(make_event(
            Activity.RENAME, uid=f"{uid(128):032x}", time=burst_start + j * 1000 // LOCKBIT_FILES_PER_S,
            user_name=BURST_USER, user_uid="6666", device="fs0", share="share0", file_path=path,
            file_new_path=path + ".locked",
        ))
    out.sort(key=lambda e: e.time)
    return out


def make_console() -> Console:
    c = Console()
    # Piped to a file (docs, CI logs), rich would wrap the tables at 80 columns.
    return c if c.is_terminal else Console(width=150)


def standalone(doc: str | None, bench: str, run: Callable[[int, Console], list[Result]],
               report: Callable[[Console, list[Result]], None], default_events: int = 200_000) -> None:
    """`python -m bench.<name>`: parse --events/-v, run, print the table, save the results."""
    args = parser((doc or bench).splitlines()[0], default_events).parse_args()
    setup_logging(args.verbose)
    out = make_console()
    results = run(args.events, out)
    report(out, results)
    save(results, bench)


def standalone_before(doc: str | None, bench: str, default_events: int, what: str,
                      run: Callable[[int, Console, str | None], list[Result]],
                      report: Callable[[Console, list[Result]], None]) -> None:
    """`standalone` plus `--before REF`: ``what`` also runs with the code of an older git ref, same run."""
    p = parser((doc or bench).splitlines()[0], default_events)
    p.add_argument("--before", metavar="REF", help=f"also run {what} with the code of this git ref")
    args = p.parse_args()
    setup_logging(args.verbose)
    out = make_console()
    results = run(args.events, out, args.before)
    report(out, results)
    save(results, bench)
