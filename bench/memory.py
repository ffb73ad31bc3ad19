"""Detector state: memory and time as events and users grow (pure detectors/ engine, in-process).

    python -m bench.memory                     # both sweeps, table + .cache/bench/memory.json
    python -m bench.memory --plot docs/img/memory.png
    python -m bench.memory --max-events 100000 --max-users 10000   # a quicker, smaller sweep

Each point runs in a fresh child process, so one point's heap never inflates the next one's RSS.
In the child: import everything and warm the policy up (the **baseline** RSS: a process with
nothing tracked), then drive ``detectors.engine.evaluate`` over a generated stream in batches of
5,000 events, one ``UserState`` per user kept in a dict, as the embedded mode keeps it. Measured:
- RSS growth over the baseline after the run (``/proc/self/status`` VmRSS, after a full collection);
- the live Python heap of the state alone (tracemalloc while the encoded states are decoded back
  into a dict: exact, and free of the garbage the events leave behind);
- the state's encoded size (msgpack bytes, what a worker's changelog table holds);
- seconds for the stream with detection, beside the same stream generated without detection
  (the time **baseline**: building the events alone, same child, same seed).
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from bench.common import REPO, RESULTS_DIR, START_MS, Result, make_console, progress, render, save, setup_logging

BENCH = "memory"
BATCH = 5_000
EVENT_SWEEP_USERS = 1_000
EVENTS_PER_USER = 10  # in the user sweep
USER_EVERY_MS = 60_000  # each user acts about once a minute: busy, ordinary, no one near a threshold


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def _stream(users: int, events: int, seed: int) -> Iterator[list]:
    """``events`` ordinary events of ``users`` users in batches, time-ordered, each user acting
    about once every USER_EVERY_MS (so the fleet's rate grows with its users): mixed
    create/update/rename/delete, each user in their own few project folders, every file name new
    (so the per-user Bloom filters and LRUs fill up as they would)."""
    from dwcore.schemas.event import Activity, make_event

    rng = random.Random(seed)
    acts = (Activity.CREATE,) * 35 + (Activity.UPDATE,) * 45 + (Activity.RENAME,) * 10 + (Activity.DELETE,) * 10
    batch: list = []
    for i in range(events):
        # Round-robin keeps every user present at every size; the shuffle of acts keeps it mixed.
        u = i % users if events >= users else rng.randrange(users)
        user = f"user{u:06d}"
        act = acts[rng.randrange(100)]
        path = f"/srv/share{u % 4}/{user}/project{rng.randrange(12)}/report-{i:08d}.docx"
        batch.append(make_event(
            act, uid=f"{rng.getrandbits(128):032x}", time=START_MS + i * USER_EVERY_MS // users, user_name=user,
            user_uid=str(1000 + u), device=f"fs{u % 3}", share=f"share{u % 4}", file_path=path,
            file_new_path=path + ".old" if act == Activity.RENAME else None,
            file_size=rng.randrange(1, 1 << 20) if act in (Activity.CREATE, Activity.UPDATE) else None,
            bytes_written=rng.randrange(1, 16 << 10) if act == Activity.UPDATE else None,
        ))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def measure_point(users: int, events: int, seed: int = 7) -> dict[str, float | int]:
    """One point, in this process (call it in a fresh child)."""
    from dwcore.detectors.engine import evaluate, warm_up
    from dwcore.detectors.policy import load_policy
    from dwcore.detectors.state import decode_state, encode_state

    policy = load_policy()
    warm_up(policy)
    for _ in _stream(10, 200, seed + 1):  # touch every code path once before the baseline RSS
        pass
    gc.collect()
    rss0 = _rss_kib()

    t0 = time.perf_counter()
    n = sum(len(b) for b in _stream(users, events, seed))
    gen_s = time.perf_counter() - t0
    gc.collect()

    state: dict[str, object] = {}
    alerts = 0
    t0 = time.perf_counter()
    for batch in _stream(users, events, seed):
        by_user: dict[str, list] = defaultdict(list)
        for ev in batch:
            by_user[ev.user_name].append(ev)
        for user, evs in by_user.items():
            st, found = evaluate(state.get(user), user, evs, policy)  # type: ignore[arg-type]
            state[user] = st
            alerts += len(found)
    run_s = time.perf_counter() - t0
    gc.collect()
    rss1 = _rss_kib()

    encoded = {u: encode_state(s) for u, s in state.items()}  # type: ignore[arg-type]
    encoded_bytes = sum(len(v) for v in encoded.values())
    state.clear()
    gc.collect()
    tracemalloc.start()
    live = {u: decode_state(v) for u, v in encoded.items()}
    heap_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"users": users, "events": n, "tracked": len(live), "alerts": alerts, "gen_s": gen_s, "run_s": run_s,
            "rss0_kib": rss0, "rss_kib": rss1, "rss_delta_kib": rss1 - rss0, "heap_bytes": heap_bytes,
            "encoded_bytes": encoded_bytes}


POINTS_DIR = RESULTS_DIR / "memory-points"


def _child(users: int, events: int, reuse: bool = False) -> dict[str, float | int]:
    cached = POINTS_DIR / f"{users}-{events}.json"
    if reuse and cached.exists():
        return json.loads(cached.read_text())
    out = subprocess.run([sys.executable, "-m", "bench.memory", "--point", f"{users},{events}"], cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"point users={users} events={events} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sweeps(max_events: int, max_users: int) -> list[tuple[str, int, int]]:
    events = [10**k for k in range(3, 7) if 10**k <= max_events]
    users = [10**k for k in range(2, 6) if 10**k <= max_users]
    return ([("events", EVENT_SWEEP_USERS, e) for e in events]
            + [("users", u, u * EVENTS_PER_USER) for u in users])


def run(max_events: int, max_users: int, console: Console, reuse: bool = False) -> list[Result]:
    points = sweeps(max_events, max_users)
    results: list[Result] = []
    with progress(console) as prog:
        task = prog.add_task("memory points (one child process each)", total=len(points))
        for sweep, users, events in points:
            load = _load()
            p = _child(users, events, reuse)
            tracked = int(p["tracked"])
            results.append(Result(
                bench=BENCH, name=f"{sweep}: {users:,} users, {events:,} events", count=int(p["events"]),
                seconds=float(p["run_s"]), rate=p["events"] / p["run_s"] if p["run_s"] else None,
                ratio=float(p["run_s"]) / float(p["gen_s"]) if p["gen_s"] else None,
                extra={"sweep": sweep, "users": users, "tracked": tracked, "alerts": int(p["alerts"]),
                       "baseline s (events only)": round(float(p["gen_s"]), 3),
                       "baseline RSS MiB": round(int(p["rss0_kib"]) / 1024, 1),
                       "+RSS MiB": round(int(p["rss_delta_kib"]) / 1024, 2),
                       "state heap MiB": round(int(p["heap_bytes"]) / 2**20, 2),
                       "heap KiB/user": round(int(p["heap_bytes"]) / 1024 / max(tracked, 1), 2),
                       "encoded KiB/user": round(int(p["encoded_bytes"]) / 1024 / max(tracked, 1), 2),
                       "load avg": load},
            ))
            prog.advance(task)
    return results


def per_unit(results: list[Result]) -> dict[str, float]:
    """The headline figures: MiB per 1,000 tracked users (the user sweep's largest point) and the
    state's growth per 1M events at a fixed 1,000 users (the event sweep's ends)."""
    out: dict[str, float] = {}
    users = [r for r in results if r.extra["sweep"] == "users"]
    if users:
        top = users[-1]
        k = int(top.extra["tracked"]) / 1000
        out["RSS MiB per 1,000 users"] = float(top.extra["+RSS MiB"]) / k
        out["state heap MiB per 1,000 users"] = float(top.extra["state heap MiB"]) / k
    ev = [r for r in results if r.extra["sweep"] == "events"]
    if len(ev) > 1:
        span = (ev[-1].count - ev[0].count) / 1e6
        out["RSS MiB per 1M events (1,000 users)"] = (float(ev[-1].extra["+RSS MiB"])
                                                      - float(ev[0].extra["+RSS MiB"])) / span
        out["state heap MiB per 1M events (1,000 users)"] = (float(ev[-1].extra["state heap MiB"])
                                                             - float(ev[0].extra["state heap MiB"])) / span
    return out


def report(console: Console, results: list[Result]) -> None:
    render(console, "Memory: detector state as events and users grow (rate = events/s with detection)", results,
           seconds_label="s", ratio_label="x events-only",
           note="Each point a fresh process. Baseline RSS: imports + policy, nothing tracked. "
                "x events-only = seconds with detection / seconds to build the same events alone.")
    for k, v in per_unit(results).items():
        console.print(f"  {k}: [bold]{v:.2f}[/]")


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, sweep, label in ((axes[0], "events", "events (1,000 users)"),
                             (axes[1], "users", f"users ({EVENTS_PER_USER} events each)")):
        pts = [r for r in results if r.extra["sweep"] == sweep]
        xs = [r.count if sweep == "events" else int(r.extra["users"]) for r in pts]
        ax.plot(xs, [float(r.extra["+RSS MiB"]) for r in pts], "o-", label="RSS growth, MiB")
        ax.plot(xs, [float(r.extra["state heap MiB"]) for r in pts], "s--", label="state heap, MiB")
        ax.plot(xs, [r.seconds for r in pts], "^:", label="seconds (with detection)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("dataward detector state: memory and time", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-events", type=int, default=1_000_000, help="event sweep up to (default 10^6)")
    p.add_argument("--max-users", type=int, default=100_000, help="user sweep up to (default 10^5)")
    p.add_argument("--plot", type=Path, help="write the plot as a PNG here")
    p.add_argument("--reuse", action="store_true",
                   help="take points already measured (.cache/bench/memory-points/) instead of measuring them again")
    p.add_argument("--point", help=argparse.SUPPRESS)  # "users,events": one point, JSON on stdout
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    setup_logging(args.verbose)
    if args.point:
        users, events = (int(x) for x in args.point.split(","))
        done = POINTS_DIR / f"{users}-{events}.json"
        pending = done.with_suffix(".pending")
        # A point another process is measuring (it left a .pending file) is waited for, not measured twice.
        while pending.exists() and not done.exists():
            time.sleep(5)
        if not done.exists():
            POINTS_DIR.mkdir(parents=True, exist_ok=True)
            pending.touch()
            try:
                done.write_text(json.dumps(measure_point(users, events)) + "\n")  # kept, for --reuse
            finally:
                pending.unlink(missing_ok=True)
        sys.stdout.write(done.read_text())
        return
    console = make_console()
    results = run(args.max_events, args.max_users, console, args.reuse)
    report(console, results)
    save(results, BENCH)
    if args.plot:
        plot(results, args.plot)
        console.print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
