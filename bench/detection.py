"""Detection quality through the real embedded pipeline: attacks caught, files lost, false alarms.

For every scenario a fresh corpus of real files (Python standard library sources, documents from
/usr/share/doc, generated CSV, PNG and compressed numpy arrays) is laid out first, then
`dataward run` is started on it as its own process (watcher, content sampler, detectors, store),
then the scenario plays in separate processes at a fixed pace (200 and 420 files/s; LockBit does
~420). The harness tails the alerts JSONL file and takes the alert time from its own clock when
the first high or critical alert line appears. Per scenario: detected, seconds from the first
damaging operation to that line, files damaged before it (operations completed by then), and for
benign work the high/critical alerts raised (false positives; low/medium ones are listed apart).

Same-run baseline (bench/detection_floor.py): the events the run stored are replayed through the
pure ``evaluate`` one at a time; where that pages is the floor with zero pipeline delay, and the
run's ``alert_timing`` log lines split the pipeline's share into its stages.

Run: `.venv/bin/python -m bench.detection [--rates 200 420] [--files 300] [--only NAME]`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.common import REPO, make_console
from bench.detection_floor import alert_timings, floor, recorded_events
from bench.detection_workloads import BENIGN, attack_proc, benign_proc, build_corpus

DAMAGE_WAIT_S = 12.0  # how long after the attack ends an alert may still count
BENIGN_WAIT_S = 8.0
GROWTH_WAIT_S = 3.0  # after an attack, for the incident's later versions (the "final" column)
ATTACKS = ("encrypt_in_place", "encrypt_header_only", "encrypt_intermittent", "encrypt_then_rename_locked",
           "rename_random_ext", "copy_encrypt_delete", "notes_then_encrypt", "mass_delete",
           "split_4_processes", "slow_attack")


# --- the harness ---------------------------------------------------------------------------------

class Watch:
    """Tails the alerts JSONL file; notes (wall clock) when each alert line first appears."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.alerts: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pos = 0
        buf = b""
        while not self._stop.is_set():
            if self.path.exists():
                with open(self.path, "rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                    pos += len(chunk)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                now = time.time()
                self.alerts.extend((now, json.loads(line)) for line in lines if line.strip())
            time.sleep(0.005)

    def first(self, severities: tuple[str, ...]) -> tuple[float, dict] | None:
        return next(((t, a) for t, a in self.alerts if a["severity"] in severities), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _start(watch: Path, data: Path, jsonl: Path, log: Path) -> subprocess.Popen[str]:
    # info: the run's alert_timing lines split each alert's time into its stages.
    cmd = [sys.executable, "-m", "dataward.cli", "run", "--watch", str(watch), "--data-dir", str(data),
           "--alerts-jsonl", str(jsonl), "--log-level", "info"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=REPO)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready"):
            return proc
    raise RuntimeError(f"dataward run did not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(2)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _workers(name: str, corpus: list[Path], root: Path, work: Path, rate: float, done: mp.Queue) -> list[mp.Process]:
    if name in BENIGN:
        return [mp.Process(target=benign_proc, args=(name, str(root), str(work), rate, done))]
    if name == "split_4_processes":
        return [mp.Process(target=attack_proc, args=("encrypt_in_place", [str(p) for p in corpus[k::4]],
                                                     rate / 4, done)) for k in range(4)]
    if name == "slow_attack":
        return [mp.Process(target=attack_proc, args=("encrypt_in_place", [str(p) for p in corpus[:30]],
                                                     1 / 3, done))]
    return [mp.Process(target=attack_proc, args=(name, [str(p) for p in corpus], rate, done))]


def run_scenario(name: str, rate: float, files: int, tmp: Path) -> dict:
    root, data, work = tmp / "share", tmp / "data", tmp / "work"
    work.mkdir(parents=True)
    corpus = build_corpus(root, files)
    if name == "compress_and_rotate_logs":
        (root / "logs").mkdir()
        for i in range(files // 2):
            (root / "logs" / f"svc{i}.log").write_text(f"line {i}\n" * 400)
    jsonl = data / "alerts.jsonl"
    proc = _start(root, data, jsonl, tmp / "run.log")
    watch = Watch(jsonl)
    done: mp.Queue = mp.Queue()
    benign = name in BENIGN
    t0 = time.time()
    procs = _workers(name, corpus, root, work, rate, done)
    for p in procs:
        p.start()
    times: list[float] = []
    while any(p.is_alive() for p in procs) or not done.empty():
        try:
            times.append(done.get(timeout=0.2))
        except Exception:
            continue
    for p in procs:
        p.join()
    ended = time.monotonic()
    deadline = ended + (BENIGN_WAIT_S if benign else DAMAGE_WAIT_S)
    while time.monotonic() < deadline and (benign or watch.first(("high", "critical")) is None
                                           or time.monotonic() < ended + GROWTH_WAIT_S):
        time.sleep(0.05)
    watch.stop()
    _stop(proc)  # flushes every event to the store, which `dataward query` then opens directly
    events = [] if benign else recorded_events(data)
    times.sort()
    row: dict = {"scenario": name, "rate": rate, "kind": "benign" if benign else "attack", "ops": len(times)}
    if benign:
        high = [a for _, a in watch.alerts if a["severity"] in ("high", "critical")]
        row["false_positives"] = sorted({a["uid"] for a in high})
        row["fp_rules"] = sorted({a["rule"] for a in high})
        row["low_medium"] = sorted({a["rule"] for _, a in watch.alerts if a["severity"] in ("low", "medium")})
        return row
    hit = watch.first(("high", "critical"))
    start = times[0] if times else t0
    row["detected"] = hit is not None
    base = floor(events)
    row["events"] = len(events)
    if base.trigger_ms is not None:
        row["floor_lost"] = sum(1 for t in times if t * 1000 <= base.trigger_ms)
        row["floor_rule"] = base.rule
        row["floor_events"] = base.events_before  # the rule's own count: events up to the one that pages
    if hit is None:
        return row
    seen, alert = hit
    row["seconds"] = round(seen - start, 2)
    row["lost"] = sum(1 for t in times if t <= seen)
    row["rules"] = sorted({e["name"] for e in alert["evidences"] if e["kind"] == "rule"})
    row["severity"] = alert["severity"]
    final = [a for _, a in watch.alerts if a["uid"] == alert["uid"]][-1]
    row["final"] = f"{final['severity']} v{final['version']} {final['file_count']} files"
    stages = alert_timings(tmp / "run.log").get((alert["uid"], alert["version"]))
    if stages and base.trigger_ms is not None:
        # Where the time from the floor's trigger (the watcher saw the event that pages) went.
        row["ms_to_batch_seen"] = stages["seen_ms"] - base.trigger_ms  # waiting for the rest of its batch
        row["ms_to_taken"] = stages["taken_ms"] - stages["seen_ms"]  # window, sampling, bus
        row["ms_detect"] = stages["detected_ms"] - stages["taken_ms"]
        row["ms_emit"] = stages["emitted_ms"] - stages["detected_ms"]
        row["ms_to_harness"] = round(seen * 1000) - stages["emitted_ms"]
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[200.0, 420.0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "detection.json")
    args = ap.parse_args(argv)
    console: Console = make_console()
    names = [n for n in (*ATTACKS, *BENIGN) if not args.only or n in args.only]
    rows = []
    load = [os.getloadavg()[0]]
    for rate in args.rates:
        for name in names:
            if name == "slow_attack" and rate != args.rates[0]:
                continue  # one file every 3 s whatever the rate
            with tempfile.TemporaryDirectory(prefix="dw-detect-") as tmp:
                row = run_scenario(name, rate, args.files, Path(tmp))
            load.append(os.getloadavg()[0])
            console.print(row)
            rows.append(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    render_table(console, rows)
    console.print(f"load average (1 min) during the run: {min(load):.1f}-{max(load):.1f}, "
                  f"{os.cpu_count()} CPUs")


def _cell(r: dict, key: str) -> str:
    return str(r.get(key, "-"))


def render_table(console: Console, rows: list[dict]) -> None:
    table = Table(title="Detection through `dataward run` (alert time taken by the harness) vs the "
                        "same run's events replayed through evaluate (floor)")
    for col in ("scenario", "files/s", "detected", "s to first high", "files lost", "floor", "+ by pipeline",
                "ms: batch | window+sample | detect | emit | harness", "rules at first high", "final",
                "false positives (high/critical)"):
        table.add_column(col)
    for r in rows:
        if r["kind"] == "attack":
            extra = r["lost"] - r["floor_lost"] if "lost" in r and "floor_lost" in r else "-"
            stages = " | ".join(_cell(r, k) for k in ("ms_to_batch_seen", "ms_to_taken", "ms_detect", "ms_emit",
                                                      "ms_to_harness"))
            table.add_row(r["scenario"], f"{r['rate']:g}", "yes" if r.get("detected") else "NO",
                          _cell(r, "seconds"), _cell(r, "lost"), _cell(r, "floor_lost"), str(extra), stages,
                          ", ".join(r.get("rules", [])), r.get("final", ""), "")
        else:
            table.add_row(r["scenario"], f"{r['rate']:g}", "", "", "", "", "", "", "", "",
                          f"{len(r['false_positives'])} {', '.join(r['fp_rules'])}".strip())
    console.print(table)
    for rate in sorted({r["rate"] for r in rows}):
        attacks = [r for r in rows if r["kind"] == "attack" and r["rate"] == rate and "lost" in r]
        if attacks:
            lost = statistics.median(r["lost"] for r in attacks)
            base = [r["floor_lost"] for r in attacks if "floor_lost" in r]
            floor_txt = f", floor (evaluate replay) {statistics.median(base):g}" if base else ""
            console.print(f"{rate:g} files/s: median files lost {lost:g}{floor_txt} over {len(attacks)} attacks")


if __name__ == "__main__":
    main()
