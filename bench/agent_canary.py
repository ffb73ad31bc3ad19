"""Canary touch -> alert from the agent itself: p50/p99 over many tries, writes and reads.

The real agent runs as its own process (`dataward agent file`, shared Kafka, fast path on) over a
share holding many canaries, each owned by its own uid (root only; the owner is who a touch is
attributed to without auditd), so every touch opens a new incident and writes a new alert line to
``agent-alerts.jsonl``. This process touches one canary at a time and measures from just before the
touch (a 2 KiB overwrite at offset 0, or a 4 KiB read) to the alert line naming it, polling the
file every 0.2 ms. Rows, all from the same run and agent:
- writes and reads with the agent otherwise idle;
- writes while another process creates files in the same share as fast as it can (the watcher's
  batches and the enrichment stages busy with that burst);
- the baseline: the same touch -> the same JSONL line when the agent learns of the touch from its
  file watcher only (canary read watch off), i.e. through the watcher's batches and the stages.

    python -m bench.agent_canary [--events N]   (N tries per row, default 60)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console

from bench.common import REPO, Result, make_console, parser, render, save, setup_logging

BENCH = "agent_canary"
FIRST_UID = 41000


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Agent:
    """`dataward agent file` in its own process, with its own data dir and topic prefix."""

    def __init__(self, root: Path, share: Path, bootstrap: str, *, watch_reads: bool) -> None:
        self.data = root / "data"
        cfg = root / f"agent-{uuid.uuid4().hex[:6]}.yaml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "data_dir": str(self.data), "agent": {"device": "bench-canary"},
            "kafka": {"bootstrap": bootstrap, "topic_prefix": f"bench-canary-{uuid.uuid4().hex[:8]}."},
            "canary": {"grace_ms": 0, "watch_reads": watch_reads},
            "capture": {"rescan_at_start": False},
        }))
        self.alerts = self.data / "agent-alerts.jsonl"
        self._offset = self.alerts.stat().st_size if self.alerts.exists() else 0
        exe = Path(sys.executable).with_name("dataward")
        self.proc = subprocess.Popen([str(exe), "agent", "file", "--watch", str(share), "--config", str(cfg),
                                      "--log-level", "error"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.startswith("ready"):
                break
        if self.proc.poll() is not None:
            raise RuntimeError("the agent did not start")

    def wait_alert(self, path: str, timeout: float = 5.0) -> bool:
        """Polls the alert file until a new line names ``path``."""
        deadline = time.perf_counter() + timeout
        buf = b""
        while time.perf_counter() < deadline:
            try:
                with open(self.alerts, "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                self._offset += len(chunk)
                buf += chunk
                for line in buf.split(b"\n")[:-1]:
                    if path in json.loads(line).get("paths", []):
                        return True
                buf = buf[buf.rfind(b"\n") + 1:]
            time.sleep(0.0002)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _plant(share: Path, data: Path, n: int) -> list[str]:
    from dwcore.agents import canary

    dirs = []
    for i in range(-(-n // len(canary.KINDS))):
        d = share / f"team{i:03d}"
        d.mkdir()
        dirs.append(str(d))
    paths = [c.path for c in canary.plant(dirs, data)][:n]
    if os.geteuid() == 0:
        for i, p in enumerate(paths):
            os.chown(p, FIRST_UID + i, FIRST_UID + i)
    return paths


def _touch(path: str, write: bool) -> None:
    if write:
        with open(path, "r+b") as f:
            f.write(os.urandom(2048))
    else:
        with open(path, "rb") as f:
            f.read(4096)


def _burst(share: Path) -> subprocess.Popen:
    code = ("import os,sys\nr=sys.argv[1]\nos.mkdir(r)\ni=0\nwhile True:\n"
            "    os.close(os.open(f'{r}/b{i:08d}.txt', os.O_CREAT|os.O_WRONLY, 0o644)); i+=1\n")
    return subprocess.Popen([sys.executable, "-c", code, str(share / "burst")])


def _row(name: str, lat: list[float], misses: int, baseline: bool = False) -> Result:
    ms = [x * 1000 for x in lat]
    extra: dict[str, float | int | str] = {"p50 ms": round(_pct(ms, 0.5), 1), "p99 ms": round(_pct(ms, 0.99), 1),
                                           "max ms": round(max(ms), 1) if ms else 0, "no alert": misses}
    return Result(bench=BENCH, name=name, count=len(ms), seconds=statistics.mean(ms) / 1000 if ms else 0.0,
                  rate=None, baseline=baseline, extra=extra, samples=ms)


def _series(agent: Agent, paths: list[str], write: bool) -> tuple[list[float], int]:
    lat, misses = [], 0
    for p in paths:
        start = time.perf_counter()
        _touch(p, write)
        if agent.wait_alert(p):
            lat.append(time.perf_counter() - start)
        else:
            misses += 1
        time.sleep(0.02)  # one touch at a time
    return lat, misses


def run(n: int, console: Console) -> list[Result]:
    from bench.publish import bootstrap as kafka_bootstrap

    bs = kafka_bootstrap()
    results: list[Result] = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dw-bench-canary-") as tmp:
        root = Path(tmp)
        share = root / "share"
        share.mkdir()
        paths = _plant(share, root / "data", 4 * n)
        writes, reads, busy, base = paths[:n], paths[n:2 * n], paths[2 * n:3 * n], paths[3 * n:]
        agent = Agent(root, share, bs, watch_reads=True)
        try:
            console.print(f"[dim]{n} canary writes, then {n} reads, agent idle[/dim]")
            results.append(_row("canary write -> agent alert (idle)", *_series(agent, writes, True)))
            results.append(_row("canary read -> agent alert (idle)", *_series(agent, reads, False)))
            console.print(f"[dim]{n} canary writes during a file-creation burst in the same share[/dim]")
            burst = _burst(share)
            try:
                time.sleep(1.0)
                results.append(_row("canary write -> agent alert (during a create burst)",
                                    *_series(agent, busy, True)))
            finally:
                burst.kill()
                burst.wait()
        finally:
            agent.stop()
        agent = Agent(root, share, bs, watch_reads=False)
        try:
            console.print(f"[dim]{n} canary writes seen by the file watcher only (baseline)[/dim]")
            results.insert(0, _row("baseline: write seen by the file watcher's batches only (idle)",
                                   *_series(agent, base, True), baseline=True))
        finally:
            agent.stop()
    load1 = os.getloadavg()
    for r in results:
        r.extra["load avg"] = f"{load0[0]:.1f} -> {load1[0]:.1f}"
    return results


def report(console: Console, results: list[Result]) -> None:
    render(console, "Canary touch -> alert written by the agent (ms, from just before the touch)", results,
           count_label="tries", seconds_label="mean s", rate_label=None,
           note="`dataward agent file` in its own process; each canary owned by its own uid; shared Kafka")


def main() -> None:
    p = parser((__doc__ or BENCH).splitlines()[0], 60)
    args = p.parse_args()
    setup_logging(args.verbose)
    out = make_console()
    results = run(args.events, out)
    report(out, results)
    save(results, BENCH)


if __name__ == "__main__":
    main()
