"""Broker outage at full size: a burst of file creations with the broker killed for 30 s in the middle.

A broker of its own (scripts/kafka on a free port, never the shared one) is started; the file agent
(`run_file_agent`, the code `dataward agent file` runs) watches a share while another process
creates N files of one byte. A third of the way in, the broker is killed (kill -9) and restarted
30 s later; the writer goes on throughout, so the spool holds what Kafka cannot take. After the
writer ends and the agent has delivered everything, the topic is read back: every event the agent
published must be there exactly once (by event uid), and every file's creation on record. Rows:
- the outage run (events, duplicates, lost, files missing, spool peak, time to drain);
- the baseline: the same burst and agent with the broker up throughout.

    python -m bench.agent_outage [--events N] [--outage-s S]   (N files, default 100,000; S default 30)
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from rich.console import Console

from bench.common import REPO, Result, make_console, parser, progress, render, save, setup_logging

BENCH = "agent_outage"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A private single-node broker through scripts/kafka (its jars cached in the checkout)."""

    def __init__(self, tmp: Path) -> None:
        cache = tmp / "cache"
        libs = REPO / ".cache" / "kafka" / "libs"
        if (libs / ".complete").exists():
            (cache / "kafka").mkdir(parents=True)
            (cache / "kafka" / "libs").symlink_to(libs)
        self.cache = cache
        self.env = {**os.environ, "DATAWARD_CACHE": str(cache), "KAFKA_PORT": str(_free_port())}
        self.env.pop("KAFKA_BROKERS", None)
        self.script = str(REPO / "scripts" / "kafka")
        out = self.ctl("start")
        self.bootstrap = out.strip().splitlines()[-1]

    def ctl(self, *args: str) -> str:
        r = subprocess.run([self.script, *args], env=self.env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/kafka {' '.join(args)} failed: {r.stderr[-2000:]}")
        return r.stdout

    def close(self) -> None:
        subprocess.run([self.script, "stop"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.cache, ignore_errors=True)


def _writer(share: Path, n: int) -> subprocess.Popen:
    code = ("import os,sys\nr,n=sys.argv[1],int(sys.argv[2])\nfor i in range(n):\n"
            "    fd=os.open(f'{r}/f{i:07d}.txt', os.O_CREAT|os.O_WRONLY, 0o644); os.write(fd, b'x'); os.close(fd)\n"
            "    if i % 1000 == 999: print(i + 1, flush=True)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(share), str(n)], stdout=subprocess.PIPE, text=True)


def _spool_bytes(spool: Path) -> int:
    try:
        return sum(p.stat().st_size for p in spool.glob("seg-*.log"))
    except OSError:
        return 0


def _read_back(bootstrap: str, topic: str, expect: int) -> tuple[Counter[str], set[str]]:
    from confluent_kafka import Consumer

    from dwcore.schemas.codec import decode_event
    from dwcore.schemas.event import Activity

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    uids: Counter[str] = Counter()
    names: set[str] = set()
    deadline, quiet = time.monotonic() + 300, 0
    try:
        while time.monotonic() < deadline and quiet < 5:
            msgs = c.consume(num_messages=10_000, timeout=1.0)
            quiet = quiet + 1 if not msgs and sum(uids.values()) >= expect else 0
            for m in msgs:
                if m.error() is None:
                    ev = decode_event(m.value())
                    uids[ev.uid] += 1
                    if ev.activity_id == Activity.CREATE:
                        names.add(os.path.basename(ev.file_path))
    finally:
        c.close()
    return uids, names


def one_run(n: int, outage_s: float, console: Console, name: str) -> Result:
    from dataward.config import load_config
    from dataward.distributed import run_file_agent

    with tempfile.TemporaryDirectory(prefix="dw-bench-outage-") as tmp_s:
        tmp = Path(tmp_s)
        broker = Broker(tmp)
        try:
            share = tmp / "share"
            share.mkdir()
            prefix = f"b{uuid.uuid4().hex[:8]}."
            config = load_config(overrides={
                "data_dir": str(tmp / "data"), "agent": {"device": "bench-outage"},
                "kafka": {"bootstrap": broker.bootstrap, "topic_prefix": prefix, "partitions": 3},
                "capture": {"heartbeat_s": 0}}, env={})
            stop, ready = threading.Event(), threading.Event()
            result: dict = {}
            agent = threading.Thread(target=lambda: result.update(
                run_file_agent(config, [str(share)], stop, ready.set, tune_inotify=True, flush_timeout_s=600)))
            agent.start()
            if not ready.wait(60):
                raise RuntimeError("agent did not start")
            start = time.monotonic()
            w = _writer(share, n)
            assert w.stdout is not None
            killed_at = restarted_at = None
            peak = 0
            with progress(console) as bar:
                task = bar.add_task(name, total=n)
                for line in w.stdout:
                    done = int(line)
                    bar.update(task, completed=done)
                    peak = max(peak, _spool_bytes(config.spool_dir))
                    if outage_s and killed_at is None and done >= n // 3:
                        broker.ctl("kill", "1")
                        killed_at = time.monotonic()
                    if killed_at is not None and restarted_at is None and time.monotonic() - killed_at >= outage_s:
                        broker.ctl("restart", "1")
                        restarted_at = time.monotonic()
            w.wait()
            if killed_at is not None and restarted_at is None:  # the writer finished first: outage goes on
                while time.monotonic() - killed_at < outage_s:
                    peak = max(peak, _spool_bytes(config.spool_dir))
                    time.sleep(0.5)
                broker.ctl("restart", "1")
                restarted_at = time.monotonic()
            written = time.monotonic()
            stop.set()  # stop() drains the kernel queue and flushes the spool (up to 600 s)
            agent.join(900)
            delivered = time.monotonic()
            uids, names = _read_back(broker.bootstrap, f"{prefix}dw.events", result.get("publisher_acked", 0))
        finally:
            broker.close()
    published = result.get("publisher_published", 0)
    dups = sum(c - 1 for c in uids.values() if c > 1)
    missing = n - len(names & {f"f{i:07d}.txt" for i in range(n)})
    extra: dict[str, float | int | str] = {
        "published": published, "arrived": len(uids), "duplicates": dups, "lost": published - len(uids),
        "files missing": missing, "left in spool": result.get("publisher_spooled_pending", -1),
        "outage s": round(restarted_at - killed_at, 1) if killed_at and restarted_at else 0,
        "spool peak MiB": round(peak / 2**20, 1), "drain s": round(delivered - written, 1)}
    return Result(bench=BENCH, name=name, count=len(uids), seconds=delivered - start,
                  rate=len(uids) / (delivered - start), baseline=not outage_s, extra=extra)


def run(n: int, console: Console, outage_s: float = 30.0) -> list[Result]:
    load0 = os.getloadavg()
    results = [one_run(n, 0.0, console, "baseline: broker up throughout"),
               one_run(n, outage_s, console, f"broker killed (kill -9) for {outage_s:.0f} s at a third of the burst")]
    load1 = os.getloadavg()
    for r in results:
        r.extra["load avg"] = f"{load0[0]:.1f} -> {load1[0]:.1f}"
    return results


def report(console: Console, results: list[Result]) -> None:
    render(console, "File agent: a burst of creations with the broker down in the middle (exactly once by uid)",
           results, note="rate = events delivered per second, from the first write to the agent's stop")


def main() -> None:
    p = parser((__doc__ or BENCH).splitlines()[0], 100_000)
    p.add_argument("--outage-s", type=float, default=30.0, help="seconds the broker stays down (default 30)")
    args = p.parse_args()
    setup_logging(args.verbose)
    out = make_console()
    results = run(args.events, out, args.outage_s)
    report(out, results)
    save(results, BENCH)


if __name__ == "__main__":
    main()
