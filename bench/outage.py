"""The broker stopped for 60 s during a burst, full size: agent -> Kafka -> sink -> ClickHouse.

    python -m bench.outage                          # 50,000 files, broker down 60 s, plus the baseline
    python -m bench.outage --files 20000 --down 30  # smaller

A private single-node broker (scripts/kafka on a free port; the shared one is never touched), a
file agent (`run_file_agent`, as `dataward agent file` runs it), and a ClickHouse sink process
(`dataward sink clickhouse`, chDB). A writer process creates ``--files`` files at full speed; when
half exist the broker is killed (kill -9), and restarted ``--down`` seconds later while the burst
goes on. The events wait in the agent's spool meanwhile. Measured, beside the same burst with no
outage in the same run (the **baseline**): events published, stored, lost, duplicated (count vs
uniqExact(uid) in ClickHouse; every file's creation on record), and seconds from the first file
to the last event stored. The CI keeps its smaller version (tests/test_agents_neverblind_e2e.py,
10,000 files, 3 s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from rich.console import Console

from bench.common import REPO, Result, make_console, render, save, setup_logging

BENCH = "outage"
STORE_TIMEOUT_S = 900.0


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def writer_main(directory: str, files: int) -> None:
    """Child: create the files at full speed, a progress line every 1,000."""
    d = Path(directory)
    for i in range(files):
        (d / f"f{i:07d}.txt").write_bytes(b"x")
        if (i + 1) % 1000 == 0:
            sys.stdout.write(f"{i + 1}\n")
            sys.stdout.flush()


class Broker:
    def __init__(self, tmp: Path) -> None:
        cache = tmp / "cache"
        libs = REPO / ".cache" / "kafka" / "libs"
        if (libs / ".complete").exists():
            (cache / "kafka").mkdir(parents=True)
            (cache / "kafka" / "libs").symlink_to(libs)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.cache = cache
        # A loaded machine starts a JVM slowly: give the node time rather than fail the run.
        self.env = {**os.environ, "DATAWARD_CACHE": str(cache), "KAFKA_PORT": str(port),
                    "KAFKA_START_TIMEOUT_S": os.environ.get("KAFKA_START_TIMEOUT_S", "600")}
        self.env.pop("KAFKA_BROKERS", None)
        self.bootstrap = self.ctl("start").strip().splitlines()[-1]

    def ctl(self, *args: str) -> str:
        out = subprocess.run([str(REPO / "scripts" / "kafka"), *args], env=self.env, capture_output=True, text=True,
                             timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"scripts/kafka {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    def close(self) -> None:
        subprocess.run([str(REPO / "scripts" / "kafka"), "stop"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.cache, ignore_errors=True)


def one_run(broker: Broker, work: Path, files: int, down_s: float) -> dict[str, float | int | str]:
    from dataward.config import load_config
    from dataward.distributed import run_file_agent
    from dwcore.sinks import query_client

    share, sink_dir = work / "share", work / "sink"
    share.mkdir(parents=True)
    prefix = f"o{uuid.uuid4().hex[:8]}."
    config = load_config(overrides={"data_dir": str(work / "agent"), "agent": {"device": "fs-outage"},
                                    "kafka": {"bootstrap": broker.bootstrap, "topic_prefix": prefix,
                                              "partitions": 3}}, env={})
    sink = subprocess.Popen([sys.executable, "-m", "dataward.cli", "sink", "clickhouse", "--bootstrap",
                             broker.bootstrap, "--topic-prefix", prefix, "--data-dir", str(sink_dir)],
                            stdout=subprocess.PIPE, stderr=open(work / "sink.log", "w"), text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stop, ready, result = threading.Event(), threading.Event(), {}
    agent = threading.Thread(target=lambda: result.update(run_file_agent(
        config, [str(share)], stop, ready.set, tune_inotify=True, flush_timeout_s=STORE_TIMEOUT_S)))
    agent.start()
    if not ready.wait(120):
        raise RuntimeError("the agent did not start")
    assert sink.stdout is not None
    for line in sink.stdout:
        if line.startswith("ready"):
            break
    threading.Thread(target=sink.stdout.read, daemon=True).start()

    dsn = f"chdb://{sink_dir / 'chdb'}"

    def stored() -> tuple[int, int]:
        try:
            rows = query_client.run_query("SELECT count(), uniqExact(uid) FROM events", dsn=dsn,
                                          database="dataward", addr_file=sink_dir / "query.addr").rows
            return int(rows[0][0]), int(rows[0][1])
        except Exception:
            return -1, -1

    load0 = loadavg()
    t0 = time.monotonic()
    writer = subprocess.Popen([sys.executable, "-m", "bench.outage", "--writer", f"{share},{files}"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    killed_at = restarted_at = None
    assert writer.stdout is not None
    for line in writer.stdout:
        if down_s and killed_at is None and int(line) >= files // 2:
            broker.ctl("kill", "1")
            killed_at = time.monotonic()
    writer.wait()
    written_s = time.monotonic() - t0
    if killed_at is not None:
        time.sleep(max(0.0, killed_at + down_s - time.monotonic()))
        broker.ctl("restart", "1")
        restarted_at = time.monotonic()
    def creates_stored() -> int:
        try:
            return int(query_client.run_query(
                "SELECT uniqExact(file_path) FROM events WHERE activity_name = 'Create' AND file_path LIKE {p:String}",
                {"p": f"{share}/f%"}, dsn=dsn, database="dataward", addr_file=sink_dir / "query.addr").rows[0][0])
        except Exception:
            return -1

    # Stop the agent only once every creation is stored: on a loaded machine the watcher can be
    # far behind the writer, and stopping the agent before it has published is not an outage.
    deadline = time.monotonic() + STORE_TIMEOUT_S
    while creates_stored() < files and time.monotonic() < deadline:
        time.sleep(1.0)
    stop.set()
    agent.join(STORE_TIMEOUT_S)
    published = int(result.get("publisher_published", -1))
    while stored()[0] < published and time.monotonic() < deadline:
        time.sleep(1.0)
    all_stored_s = time.monotonic() - t0
    count, unique = stored()
    creates = query_client.run_query(
        "SELECT uniqExact(file_path) FROM events WHERE activity_name = 'Create' AND file_path LIKE {p:String}",
        {"p": f"{share}/f%"}, dsn=dsn, database="dataward", addr_file=sink_dir / "query.addr").rows[0][0]
    sink.send_signal(2)
    sink.wait(120)
    return {"published": published, "acked": int(result.get("publisher_acked", -1)),
            "spooled pending": int(result.get("publisher_spooled_pending", -1)),
            "stored": count, "duplicates": count - unique, "lost": published - unique,
            "files on record": int(creates), "write s": round(written_s, 1),
            "broker down s": round((restarted_at or 0) - (killed_at or 0), 1),
            "to all stored s": round(all_stored_s, 1), "load avg (1 min)": f"{load0}->{loadavg()}"}


def run(files: int, down_s: float, console: Console) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-outage-") as tmp:
        broker = Broker(Path(tmp))
        try:
            for label, down in (("no outage", 0.0), (f"broker killed {down_s:.0f} s mid-burst", down_s)):
                console.print(f"[dim]{label}: {files:,} files...[/]")
                got = one_run(broker, Path(tmp) / label.split()[0], files, down)
                results.append(Result(bench=BENCH, name=label, count=files, seconds=float(got["to all stored s"]),
                                      rate=None, baseline=down == 0.0, extra=got))
        finally:
            broker.close()
    base = results[0].seconds
    for r in results:
        r.ratio = r.seconds / base if base else None
    return results


def report(console: Console, results: list[Result]) -> None:
    render(console, "Broker outage during a burst: agent -> Kafka -> sink -> ClickHouse", results,
           count_label="files", seconds_label="s to all stored", rate_label=None, ratio_label="x baseline",
           note="lost = published - distinct uids stored; duplicates = rows - distinct uids; "
                "files on record = distinct created files stored (must equal files).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=50_000)
    p.add_argument("--down", type=float, default=60.0, help="seconds the broker stays down (default 60)")
    p.add_argument("--writer", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    setup_logging(args.verbose)
    if args.writer:
        directory, n = args.writer.rsplit(",", 1)
        writer_main(directory, int(n))
        return
    console = make_console()
    results = run(args.files, args.down, console)
    report(console, results)
    save(results, BENCH)
    bad = [r.name for r in results if r.extra["lost"] or r.extra["duplicates"] or r.extra["files on record"] != r.count]
    if bad:
        raise SystemExit(f"events lost or duplicated in: {', '.join(bad)}")


if __name__ == "__main__":
    main()
