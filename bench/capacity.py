"""A capacity plan from measured figures: how many partitions, workers, sinks and ClickHouse
shards a fleet of file servers needs, how much it stores, and which part saturates first.

    python -m bench.capacity            # measure bytes per stored row now; rates from .cache/bench/
    python -m bench.capacity --rows N   # rows inserted to measure compression (default 200,000)

Per-process rates come from the latest benchmark results in .cache/bench/ (publish.json,
store.json, worker.json; run `python -m bench.run_all` first); a missing one falls back to the
figure in docs/performance.md and says so. Bytes per row are read from the store's own part sizes
(system.parts) after inserting the benchmark workload into a fresh chDB.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.common import RESULTS_DIR, make_console, make_workload

# Fallbacks: docs/performance.md (agent 2026-11-27, worker and sink 2026-12-05; 2 vCPUs, shared VM), used only
# when no result file exists.
FALLBACK = {"agent": 94_500.0, "sink": 89_800.0, "worker": 7_055.0}
HEADROOM = 0.5  # plan every process at half its measured rate: bursts, rebalances, replays
SHARD_INSERT_ROWS_S = 200_000.0  # one ClickHouse shard, rows/s in 10k-100k row batches (anchor)
QUIET_EVENTS_S = 2.0  # per file server: a working day's background of creates, edits, renames
BUSY_EVENTS_S = 20.0  # per file server in a busy hour (10x quiet)
ATTACK_EVENTS_S = 420.0  # a server under attack (LockBit's ~25,000 files/min)
ATTACKED_SHARE = 0.01  # attacks and bulk jobs hit a few servers at a time, not the whole fleet
FLEETS = (10, 1_000, 100_000)


@dataclass(frozen=True)
class Rates:
    agent: float  # events/s one agent publishes (KafkaPublisher, spool on)
    worker: float  # events/s one faust worker processes
    sink: float  # rows/s one sink process stores
    bytes_per_row: float
    sources: dict[str, str]


def _best_rate(path: Path, name_part: str) -> float | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    rates = [r["rate"] for r in doc.get("results", []) if name_part in r["name"] and r.get("rate")]
    return max(rates) if rates else None


def measured_rates(bytes_per_row: float) -> Rates:
    sources: dict[str, str] = {}
    found = {
        "agent": _best_rate(RESULTS_DIR / "publish.json", "KafkaPublisher"),
        "sink": _best_rate(RESULTS_DIR / "store.json", "ClickHouseSink"),  # end to end, Kafka bytes to rows
        "worker": _best_rate(RESULTS_DIR / "worker.json", "dataward worker x1"),
    }
    values: dict[str, float] = {}
    for key, value in found.items():
        if value is None:
            values[key] = FALLBACK[key]
            sources[key] = "docs/performance.md (no result file)"
        else:
            values[key] = value
            sources[key] = ".cache/bench"
    return Rates(values["agent"], values["worker"], values["sink"], bytes_per_row, sources)


def bytes_per_stored_row(rows: int) -> float:
    """Insert the benchmark workload into a fresh chDB and read the compressed size of its parts."""
    from dwcore.sinks.store import Store

    with tempfile.TemporaryDirectory(prefix="dw-capacity-") as tmp:
        store = Store.open(f"chdb://{tmp}/chdb", retention_days=3650)
        try:
            store.writer.ensure_schema()
            events = make_workload(rows, users=1_000)
            for i in range(0, len(events), 50_000):
                store.writer.insert_events(events[i : i + 50_000])
            result = store.reader.query(
                "SELECT sum(bytes_on_disk), sum(rows) FROM system.parts "
                "WHERE database = 'dataward' AND table IN ('events', 'events_by_path', 'user_minute') AND active"
            )
            total_bytes, _ = result.rows[0]
        finally:
            store.close()
    return float(total_bytes) / rows


def plan(rates: Rates, servers: int, per_server: float) -> dict[str, float | int | str]:
    events_s = servers * per_server
    workers = max(1, math.ceil(events_s / (rates.worker * HEADROOM)))
    sinks = max(1, math.ceil(events_s / (rates.sink * HEADROOM)))
    shards = max(1, math.ceil(events_s / (SHARD_INSERT_ROWS_S * HEADROOM)))
    # Partitions: enough for every worker and sink to own some, rounded up to a multiple of 12 so
    # that the group can grow by 1, 2, 3, 4 or 6 without moving most partitions.
    partitions = 12 * math.ceil(max(workers, sinks, 6) / 12)
    per_day = events_s * 86_400 * rates.bytes_per_row
    limits = {"workers": rates.worker, "sinks": rates.sink, "ClickHouse shards": SHARD_INSERT_ROWS_S}
    first = min(limits, key=lambda k: limits[k])
    return {"servers": servers, "events/s": events_s, "partitions": partitions, "workers": workers, "sinks": sinks,
            "shards": shards, "GiB/day": per_day / 2**30, "TiB/year": per_day * 365 / 2**40,
            "saturates first": first}


def render(console: Console, rates: Rates) -> None:
    console.print(
        f"[bold]Measured per process[/]: agent {rates.agent:,.0f} events/s ({rates.sources['agent']}), "
        f"worker {rates.worker:,.0f} events/s ({rates.sources['worker']}), sink {rates.sink:,.0f} rows/s "
        f"({rates.sources['sink']}); stored {rates.bytes_per_row:,.1f} bytes per event (events + per-path "
        f"copy + per-minute summary, compressed). Planned at {HEADROOM:.0%} of each rate."
    )
    burst = BUSY_EVENTS_S + ATTACKED_SHARE * ATTACK_EVENTS_S
    titles = {
        "quiet": f"{QUIET_EVENTS_S:g} events/s per file server",
        "burst": f"busy hour {BUSY_EVENTS_S:g} events/s per server, {ATTACKED_SHARE:.0%} of servers at "
                 f"{ATTACK_EVENTS_S:g}/s (= {burst:g} per server)",
    }
    for label, per_server in (("quiet", QUIET_EVENTS_S), ("burst", burst)):
        table = Table(title=f"{label}: {titles[label]}", title_justify="left")
        cols = ("servers", "events/s", "partitions", "workers", "sinks", "shards", "GiB/day", "TiB/year",
                "saturates first")
        for col in cols:
            table.add_column(col, justify="left" if col == "saturates first" else "right")
        for servers in FLEETS:
            row = plan(rates, servers, per_server)
            table.add_row(*(f"{row[c]:,.1f}" if isinstance(row[c], float) else
                            (f"{row[c]:,}" if isinstance(row[c], int) else str(row[c])) for c in cols))
        console.print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "capacity plan")
    p.add_argument("--rows", type=int, default=200_000, help="rows inserted to measure bytes per row")
    args = p.parse_args()
    console = make_console()
    rates = measured_rates(bytes_per_stored_row(args.rows))
    render(console, rates)


if __name__ == "__main__":
    main()
