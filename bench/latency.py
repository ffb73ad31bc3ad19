"""Embedded-mode detection latency: first rename -> mass_rename alert, and the files lost meanwhile.

A separate process plays the attacker, as ransomware would be (in-process it would fight the
watcher for the GIL): it writes N files into a fresh subdirectory of the watched root, then
renames each to ``.locked`` (the self-test's pattern), at LockBit's ~420 files/s and at full
speed, noting CLOCK_MONOTONIC (shared by all processes) around every rename. Measured:
- EmbeddedPipeline (watcher -> bus -> detect -> alert insert -> on_alert), per-user state cleared
  before each run, so every run is a first burst;
- FileWatcher alone: until its emit callback has delivered the threshold-th (25th) rename;
- baseline, watchdog alone: until its handler has seen the 25th move event.
"Lost" counts renames completed before the detection: the files lost at that speed.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from rich.console import Console
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bench.common import LOCKBIT_FILES_PER_S, Result, make_console, progress, render, save, setup_logging
from bench.common import parser as base_parser
from dataward.config import AgentConfig, Config
from dataward.embedded import EmbeddedPipeline
from dwcore.agents.watcher import FileWatcher
from dwcore.detectors.policy import load_policy
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent, Activity

BENCH = "latency"
RULE = "mass_rename"
DETECT_TIMEOUT_S = 15.0
QUIET_S = 0.25


# -- the attacker (child process) --------------------------------------------------------------

def attacker(conn: Connection) -> None:
    """Serves ("create", dir, n) and ("rename", dir, n, rate) until ("stop",)."""
    import os

    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            return
        directory, files = Path(cmd[1]), cmd[2]
        paths = [directory / f"sample-{i:05d}.csv" for i in range(files)]
        if cmd[0] == "create":
            for path in paths:
                path.write_bytes(os.urandom(256))
            conn.send(None)
            continue
        rate = cmd[3]
        done: list[float] = []
        t0 = time.monotonic()
        for i, path in enumerate(paths):
            if rate:
                due = t0 + i / rate
                while (left := due - time.monotonic()) > 0:
                    time.sleep(left)
            path.rename(path.with_name(path.name + ".locked"))
            done.append(time.monotonic())
        conn.send((t0, done))


class Attacker:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")  # no fork of a process full of watcher threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=attacker, args=(child,), name="dw-bench-attacker", daemon=True)
        self._proc.start()

    def create(self, directory: Path, files: int) -> None:
        self._conn.send(("create", str(directory), files))
        self._conn.recv()

    def rename(self, directory: Path, files: int, rate: int) -> tuple[float, list[float]]:
        self._conn.send(("rename", str(directory), files, rate))
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send(("stop",))
        self._proc.join(10)


# -- what is measured --------------------------------------------------------------------------

class Target(Protocol):
    name: str
    detected_at: float | None

    def start(self) -> None: ...
    def seen(self) -> int: ...
    def reset(self) -> None: ...
    def stop(self) -> None: ...


class WatchdogTarget:
    """Baseline: watchdog's own observer and a handler counting move events."""

    name = "watchdog alone: 25th move"

    def __init__(self, root: Path, threshold: int) -> None:
        self.root, self.threshold = root, threshold
        self.detected_at: float | None = None
        self._count = self._moves = 0
        self._observer = Observer()

    def start(self) -> None:
        target = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                target._count += 1
                if event.event_type == "moved" and not event.is_synthetic:
                    target._moves += 1
                    if target._moves == target.threshold:
                        target.detected_at = time.monotonic()

        self._observer.schedule(Handler(), str(self.root), recursive=True)
        self._observer.start()

    def seen(self) -> int:
        return self._count

    def reset(self) -> None:
        self._moves, self.detected_at = 0, None

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(10)


class FileWatcherTarget:
    """The agent's watcher (translation, owner lookup, 50 ms batching) without detection."""

    name = "FileWatcher: 25th rename emitted"

    def __init__(self, root: Path, threshold: int) -> None:
        self.threshold = threshold
        self.detected_at: float | None = None
        self._renames = 0
        self._watcher = FileWatcher([str(root)], "bench", self._emit)

    def _emit(self, batch: list[AccessEvent]) -> None:
        self._renames += sum(1 for e in batch if e.activity_id == Activity.RENAME)
        if self.detected_at is None and self._renames >= self.threshold:
            self.detected_at = time.monotonic()

    def start(self) -> None:
        self._watcher.start()

    def seen(self) -> int:
        return self._watcher.counters["seen"]

    def reset(self) -> None:
        self._renames, self.detected_at = 0, None

    def stop(self) -> None:
        self._watcher.stop()


class PipelineTarget:
    """The whole embedded mode; the alert is noticed in on_alert, after it was stored."""

    name = "EmbeddedPipeline: mass_rename alert"

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.detected_at: float | None = None
        config = Config(data_dir=str(data_dir), agent=AgentConfig(device="bench"))
        self.pipeline = EmbeddedPipeline(config, load_policy(), [str(root)], on_alert=self._on_alert)

    def _on_alert(self, alert: Alert) -> None:
        if alert.rule == RULE and self.detected_at is None:
            self.detected_at = time.monotonic()

    def start(self) -> None:
        self.pipeline.start()

    def seen(self) -> int:
        return self.pipeline.events_processed

    def reset(self) -> None:
        # Called once quiet: every run is a first burst by a user without history.
        self.pipeline.state.clear()
        self.detected_at = None

    def stop(self) -> None:
        self.pipeline.stop()


# -- the runs ----------------------------------------------------------------------------------

def wait_for(pred: Callable[[], bool], timeout_s: float, interval_s: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval_s)
    return pred()


def settle(target: Target, at_least: int, timeout_s: float = 20.0) -> None:
    """Until the target has seen ``at_least`` events and then nothing new for QUIET_S."""
    if not wait_for(lambda: target.seen() >= at_least, timeout_s):
        raise RuntimeError(f"{target.name}: saw {target.seen()} events, expected at least {at_least}")
    last, quiet_since = target.seen(), time.monotonic()
    while time.monotonic() - quiet_since < QUIET_S:
        time.sleep(0.02)
        now = target.seen()
        if now != last:
            last, quiet_since = now, time.monotonic()


Sample = tuple[float, int, float]  # seconds to detection, files renamed by then, attacker files/s


def measure(target: Target, attacker: Attacker, root: Path, files: int, rate: int, run_no: int) -> Sample:
    """One burst: seconds from first rename to detection, renames completed by then, attack speed."""
    sub = root / f"{type(target).__name__}-{rate}-{run_no}"
    before = target.seen()
    sub.mkdir()
    settle(target, before + 1)  # the new directory is watched before anything is written in it
    before = target.seen()
    attacker.create(sub, files)
    settle(target, before + files)
    target.reset()
    t0, done = attacker.rename(sub, files, rate)
    if not wait_for(lambda: target.detected_at is not None, DETECT_TIMEOUT_S):
        raise RuntimeError(f"{target.name}: no detection within {DETECT_TIMEOUT_S}s of the first rename")
    detected = target.detected_at
    assert detected is not None
    return detected - t0, sum(1 for t in done if t <= detected), files / (done[-1] - t0)


def run(files: int, runs: int, console: Console, rates: tuple[int, ...] = (LOCKBIT_FILES_PER_S, 0)) -> list[Result]:
    threshold = next(r.threshold for r in load_policy().rules if r.name == RULE)
    samples: dict[tuple[str, int], list[Sample]] = {}
    attacker = Attacker()
    try:
        with tempfile.TemporaryDirectory(prefix="dw-bench-latency-") as tmp:
            root = Path(tmp) / "watch"
            root.mkdir()
            makers: list[Callable[[], Target]] = [
                lambda: WatchdogTarget(root, threshold),
                lambda: FileWatcherTarget(root, threshold),
                lambda: PipelineTarget(root, Path(tmp) / "data"),
            ]
            with progress(console) as prog:
                task = prog.add_task("rename bursts", total=len(makers) * len(rates) * runs)
                for make in makers:
                    target = make()
                    target.start()
                    try:
                        for rate in rates:
                            for i in range(runs):
                                samples.setdefault((target.name, rate), []).append(
                                    measure(target, attacker, root, files, rate, i))
                                prog.advance(task)
                    finally:
                        # Let the last burst's events drain: stopping mid-flow makes watchdog log errors.
                        settle(target, 0)
                        target.stop()
    finally:
        attacker.close()
    return summarise(samples, files)


def summarise(samples: dict[tuple[str, int], list[Sample]], files: int) -> list[Result]:
    results: list[Result] = []
    for rate in sorted({r for _, r in samples}, reverse=True):
        group = [(name, s) for (name, r), s in samples.items() if r == rate]
        base_median = statistics.median(lat for lat, _, _ in group[0][1])
        speed = f"{rate}/s" if rate else "full speed"
        for i, (name, s) in enumerate(group):
            lat_ms = [lat * 1000 for lat, _, _ in s]
            lost = [n for _, n, _ in s]
            median = statistics.median(lat_ms)
            results.append(Result(
                bench=BENCH, name=f"{name} @ {speed}", count=len(s), seconds=median / 1000, rate=None,
                ratio=median / (base_median * 1000), baseline=i == 0,
                extra={"min ms": min(lat_ms), "median ms": median, "max ms": max(lat_ms),
                       "+ms": median - base_median * 1000,
                       "files": files, "lost (median)": statistics.median(lost), "lost max": max(lost),
                       "attack files/s": statistics.median(v for _, _, v in s)},
                samples=[round(v, 2) for v in lat_ms],
            ))
    return results


def report(console: Console, results: list[Result]) -> None:
    render(console, "Latency: first rename -> detection (embedded mode)", results, count_label="runs",
           seconds_label="median s", rate_label=None, ratio_label="x watchdog",
           note="Each run a fresh subdirectory; the attacker is its own process. "
                "+ms = median minus watchdog's; lost = files renamed before the detection. "
                "LockBit ~420 files/s: 100 ms costs ~42 files.")


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], 300)
    p.add_argument("--runs", type=int, default=5, help="bursts per watcher and speed (default 5)")
    return p


def main() -> None:
    args = parser().parse_args()
    setup_logging(args.verbose)
    console = make_console()
    results = run(args.events, args.runs, console)
    report(console, results)
    save(results, BENCH)


if __name__ == "__main__":
    main()
