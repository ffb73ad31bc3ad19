"""Every benchmark in sequence, each with its baseline; tables on the terminal, all results in
``.cache/bench/latest.json``. A benchmark that fails is reported and the others still run.

    python -m bench.run_all [--events N] [--files N] [--runs N] [--only publish,store,...]
    (latency_load, memory and outage have their own sizes: --load-runs, --memory-events, --outage-files...)
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

from rich.console import Console
from rich.rule import Rule

from bench import agent, detect, latency, latency_load, memory, outage, publish, store, worker
from bench.common import Result, machine, make_console, save, setup_logging

log = logging.getLogger("bench")

Bench = tuple[Callable[[argparse.Namespace, Console], list[Result]], Callable[[Console, list[Result]], None]]

BENCHES: dict[str, Bench] = {
    "publish": (lambda a, c: publish.run(a.events, c), publish.report),
    "store": (lambda a, c: store.run(a.events, c), store.report),
    "detect": (lambda a, c: detect.run(a.events, c), detect.report),
    "latency": (lambda a, c: latency.run(a.files, a.runs, c), latency.report),
    "worker": (lambda a, c: worker.run(min(a.events, 100_000), c), worker.report),
    "agent": (lambda a, c: agent.run(a.files if a.files > 1000 else 20_000, c), agent.report),
    "latency_load": (lambda a, c: latency_load.run(a.load_runs, a.load_rate, (100, 1_000), ("kafka", "embedded"),
                                                   40, c), latency_load.report),
    "memory": (lambda a, c: memory.run(a.memory_events, a.memory_users, c), memory.report),
    "outage": (lambda a, c: outage.run(a.outage_files, a.outage_down, c), outage.report),
}


def main() -> None:
    p = argparse.ArgumentParser(description="Run every dataward benchmark against its baseline.")
    p.add_argument("--events", type=int, default=200_000, help="events for the throughput benchmarks")
    p.add_argument("--files", type=int, default=300, help="files per rename burst (latency)")
    p.add_argument("--runs", type=int, default=5, help="bursts per watcher and speed (latency)")
    p.add_argument("--load-runs", type=int, default=20, help="bursts per condition (latency_load)")
    p.add_argument("--load-rate", type=int, default=10_000, help="background events/s (latency_load)")
    p.add_argument("--memory-events", type=int, default=1_000_000, help="event sweep up to (memory)")
    p.add_argument("--memory-users", type=int, default=100_000, help="user sweep up to (memory)")
    p.add_argument("--outage-files", type=int, default=50_000, help="files in the burst (outage)")
    p.add_argument("--outage-down", type=float, default=60.0, help="seconds the broker is down (outage)")
    p.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset, in this order")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    setup_logging(args.verbose)
    console = make_console()
    info = machine()
    console.print(f"[bold]dataward benchmarks[/] on {info['cpus']} x {info['cpu_model']}, {info['memory']}, "
                  f"Python {info['python']}")
    everything: list[Result] = []
    failed: list[str] = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in BENCHES:
            p.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        bench_run, bench_report = BENCHES[name]
        console.print(Rule(name))
        t0 = time.perf_counter()
        try:
            results = bench_run(args, console)
        except Exception as exc:  # one broken benchmark (no broker, say) must not hide the others
            failed.append(name)
            log.exception("bench_failed name=%s", name)
            console.print(f"[red]{name} failed:[/] {exc}")
            continue
        bench_report(console, results)
        console.print(f"[dim]{name}: {time.perf_counter() - t0:.1f} s wall[/]")
        everything.extend(results)
    path = save(everything, "latest")
    console.print(f"results: {path}" + (f"  [red]failed: {', '.join(failed)}[/]" if failed else ""))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
