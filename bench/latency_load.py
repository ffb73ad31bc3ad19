"""End to end under load: a file operation -> the alert, Kafka path and embedded, p50/p99.

    python -m bench.latency_load                         # both paths, 20 bursts per condition
    python -m bench.latency_load --runs 40 --rate 10000 --users 100,1000 --paths kafka,embedded

Each burst: a fresh directory in the watched tree gets ``--files`` files owned by a uid never
used before (so the owner attribution makes every burst a new user's first burst), then the
attacker process (its own process, as ransomware would be) renames them to ``.locked`` at full
speed. Latency runs from the rename that made the alert due (the threshold-th rename of the rule
that paged: ``.locked`` is a known ransomware extension, so known_extension pages at the 3rd,
before mass_rename's 25th) until the user's first alert is seen:
- **kafka**: `dataward agent file` -> dw.events -> `dataward worker` -> dw.alerts, read by a
  consumer in this process;
- **embedded**: `EmbeddedPipeline` (what `dataward run` runs), at its ``on_alert``.
Conditions, measured in the same run: **no load (baseline)**, then a background of other users'
activity at ``--rate`` events/s spread over each count of ``--users``. In the Kafka path the
background is a separate producer process writing ordinary events (creates and small updates of
their own files) to dw.events; in the embedded mode a thread puts the same events on the bus,
where the watcher would (creating 10k files/s would measure the disk, not dataward). The load
average is recorded beside every condition; the background's achieved rate and the worker's lag
at the end say whether the load was really carried.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console

from bench.background_load import BackgroundProcess, BackgroundThread
from bench.common import Result, make_console, progress, render, save, setup_logging
from bench.latency import Attacker, wait_for
from bench.publish import bootstrap, create_topic
from dwcore.schemas.codec import decode_alert
from dwcore.schemas.topics import Topics

log = logging.getLogger("bench.latency_load")
BENCH = "latency_load"
PARTITIONS = 6
SETTLE_S = 1.0  # after the files are created and chowned: the watcher has batched and sent them
ALERT_TIMEOUT_S = float(os.environ.get("DW_BENCH_ALERT_TIMEOUT_S", "60"))
FIRST_UID = 40_000
DRAIN_S = 120.0
GIVE_UP_AFTER = 3  # bursts without an alert, none with one: the condition is reported as not carried


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the two paths --------------------------------------------------------------------------

class AlertClock:
    """Monotonic time at which a burst user's first alert was seen, and its rule."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, str]] = {}
        self.other = 0  # alerts for anyone else (the background must raise none)

    def saw(self, user: str, rule: str) -> None:
        log.debug("alert_seen user=%s rule=%s", user, rule)
        if user.isdigit() and int(user) >= FIRST_UID:
            self.first.setdefault(user, (time.monotonic(), rule))
        else:
            self.other += 1


def _dataward(args: list[str], log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "dataward.cli", *args], stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, cwd=log.parent,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready" in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc
    raise RuntimeError(f"dataward {args[0]} exited before ready; see {log}")


class KafkaPath:
    name = "kafka"

    def __init__(self, root: Path, work: Path, servers: str) -> None:
        self.servers = servers
        prefix = f"bl{uuid.uuid4().hex[:8]}."
        self.topics = Topics.with_prefix(prefix)
        admin = AdminClient({"bootstrap.servers": servers})
        create_topic(admin, self.topics.events, PARTITIONS)
        for t in (self.topics.alerts, self.topics.deadletter, self.topics.heartbeats):
            create_topic(admin, t, 1)
        common = ["--bootstrap", servers, "--topic-prefix", prefix]
        self.group = f"dataward-worker-{prefix}".rstrip(".")
        self.clock = AlertClock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_alerts, daemon=True)
        self._reader.start()
        self.worker = _dataward(["worker", *common, "--data-dir", str(work / "worker")], work / "worker.log")
        self.agent = _dataward(["agent", "file", "--watch", str(root), *common, "--data-dir", str(work / "agent"),
                                "--device", "bench-fs"], work / "agent.log")

    def _read_alerts(self) -> None:
        c = Consumer({"bootstrap.servers": self.servers, "group.id": f"bench-{uuid.uuid4().hex}",
                      "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
        c.subscribe([self.topics.alerts])
        try:
            while not self._stop.is_set():
                msg = c.poll(0.05)
                if msg is not None and msg.error() is None:
                    a = decode_alert(msg.value())
                    self.clock.saw(a.user, a.rule)
        finally:
            c.close()

    def background(self, rate: int, users: int) -> BackgroundProcess:
        return BackgroundProcess(self.servers, self.topics.events, rate, users)

    def lag(self) -> int:
        c = Consumer({"bootstrap.servers": self.servers, "group.id": self.group, "enable.auto.commit": False})
        try:
            parts = [TopicPartition(self.topics.events, p) for p in range(PARTITIONS)]
            done = c.committed(parts, timeout=10)
            ends = [c.get_watermark_offsets(p, timeout=10)[1] for p in parts]
        finally:
            c.close()
        return sum(end - max(tp.offset, 0) for tp, end in zip(done, ends, strict=True))

    def stop(self) -> None:
        for proc in (self.agent, self.worker):
            proc.send_signal(signal.SIGINT)
        for proc in (self.agent, self.worker):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._stop.set()
        self._reader.join(10)


class EmbeddedPath:
    name = "embedded"

    def __init__(self, root: Path, work: Path, servers: str) -> None:
        from dataward.config import AgentConfig, Config
        from dataward.embedded import EmbeddedPipeline
        from dwcore.detectors.policy import load_policy

        self.clock = AlertClock()
        config = Config(data_dir=str(work / "data"), agent=AgentConfig(device="bench-fs"))
        self.pipeline = EmbeddedPipeline(config, load_policy(), [str(root)],
                                         on_alert=lambda a: self.clock.saw(a.user, a.rule))
        self.pipeline.start()

    def background(self, rate: int, users: int) -> BackgroundThread:
        return BackgroundThread(self.pipeline.publish, rate, users)

    def lag(self) -> int:
        return self.pipeline.bus.published - self.pipeline.events_processed

    def stop(self) -> None:
        self.pipeline.stop()


# -- the runs ----------------------------------------------------------------------------------

class Bursts:
    def __init__(self, root: Path, attacker: Attacker, files: int, thresholds: dict[str, int]) -> None:
        self.root, self.attacker, self.files, self.thresholds = root, attacker, files, thresholds
        self.next_uid = FIRST_UID
        self.rules: dict[str, int] = {}  # which rule paged first, how often

    def one(self, path: KafkaPath | EmbeddedPath) -> tuple[float, float] | None:
        """(ms from the rename that made the alert due, ms from the first rename) to the alert;
        None when no alert came within ALERT_TIMEOUT_S (a pipeline that cannot keep up)."""
        uid = self.next_uid
        self.next_uid += 1
        sub = self.root / f"burst-{uid}"
        sub.mkdir()
        os.chown(sub, uid, uid)
        self.attacker.create(sub, self.files)
        for f in sub.iterdir():
            os.chown(f, uid, uid)
        time.sleep(SETTLE_S)
        t0, done = self.attacker.rename(sub, self.files, 0)
        user = str(uid)
        if not wait_for(lambda: user in path.clock.first, ALERT_TIMEOUT_S, 0.002):
            log.warning("no_alert path=%s uid=%s timeout_s=%s", path.name, uid, ALERT_TIMEOUT_S)
            return None
        seen, rule = path.clock.first[user]
        self.rules[rule] = self.rules.get(rule, 0) + 1
        # .locked is a known ransomware extension: known_extension pages at its 3rd rename,
        # before mass_rename's 25th. The operation that made the alert due is the rule's threshold-th.
        due = done[min(self.thresholds.get(rule, 1), len(done)) - 1]
        return (seen - due) * 1000, (seen - t0) * 1000


def _name(paths: tuple[str, ...]) -> str:
    return BENCH if len(paths) != 1 else f"{BENCH}-{paths[0]}"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def run(runs: int, rate: int, user_counts: tuple[int, ...], paths: tuple[str, ...], files: int,
        console: Console) -> list[Result]:
    from dwcore.detectors.policy import load_policy

    thresholds = {r.name: r.threshold for r in load_policy().rules}
    servers = bootstrap() if "kafka" in paths else ""
    conditions = [(0, 0)] + [(rate, u) for u in user_counts]
    results: list[Result] = []
    attacker = Attacker()
    try:
        with tempfile.TemporaryDirectory(prefix="dw-bench-latload-") as tmp, progress(console) as prog:
            task = prog.add_task("bursts", total=len(paths) * len(conditions) * (runs + 1))
            for kind in paths:
                root, work = Path(tmp) / kind / "watch", Path(tmp) / kind
                root.mkdir(parents=True)
                path = (KafkaPath if kind == "kafka" else EmbeddedPath)(root, work, servers)
                bursts = Bursts(root, attacker, files, thresholds)
                try:
                    if bursts.one(path) is None:  # warm-up: the first alert of a fresh process is a cold start
                        raise RuntimeError(f"{kind}: no alert for the warm-up burst; see the logs in {work}")
                    base_p50: float | None = None
                    for bg_rate, users in conditions:
                        load0 = loadavg()
                        bg = path.background(bg_rate, users) if bg_rate else None
                        if bg is not None:
                            time.sleep(3.0)  # let the background reach its rate before measuring
                        prog.advance(task)
                        other0 = path.clock.other
                        bursts.rules = {}
                        samples: list[tuple[float, float]] = []
                        missed = 0
                        for _ in range(runs):
                            got = bursts.one(path)
                            if got is None:
                                missed += 1
                            else:
                                samples.append(got)
                            prog.advance(task)
                            if missed >= GIVE_UP_AFTER and not samples:
                                break  # the pipeline cannot carry this load: say so, do not wait it out
                        achieved = bg.stop() if bg is not None else 0.0
                        lag = path.lag()
                        # The next condition starts from an idle pipeline, not this one's backlog.
                        wait_for(lambda p=path: p.lag() <= 0, DRAIN_S, 0.5)
                        lat = [a for a, _ in samples] or [ALERT_TIMEOUT_S * 1000]
                        p50 = statistics.median(lat)
                        base_p50 = p50 if base_p50 is None else base_p50
                        label = "no load" if not bg_rate else f"{bg_rate:,}/s, {users:,} users"
                        results.append(Result(
                            bench=BENCH, name=f"{kind}: {label}", count=len(lat), seconds=p50 / 1000, rate=None,
                            ratio=p50 / base_p50 if base_p50 else None, baseline=not bg_rate,
                            extra={"p50 ms": round(p50, 1) if samples else f"> {ALERT_TIMEOUT_S * 1000:.0f}",
                                   "p99 ms": round(pct(lat, 0.99), 1) if samples else f"> {ALERT_TIMEOUT_S * 1000:.0f}",
                                   "p50 from 1st rename ms": round(statistics.median(b for _, b in samples), 1)
                                   if samples else "-",
                                   "missed": missed, "bg events/s": round(achieved), "lag at end": lag,
                                   "other alerts": path.clock.other - other0,
                                   "first rule": ",".join(sorted(bursts.rules)),
                                   "load avg (1 min)": f"{load0.split()[0]}->{loadavg().split()[0]}"},
                            samples=[round(v, 2) for v in lat]))
                        save(results, _name(paths))  # after each condition: a long run keeps what it has
                finally:
                    path.stop()
    finally:
        attacker.close()
    return results


def report(console: Console, results: list[Result]) -> None:
    render(console, "End to end under load: threshold-crossing rename -> alert (p50/p99)", results,
           count_label="bursts", seconds_label="p50 s", rate_label=None, ratio_label="x no load",
           note="Baseline: the same path with no background, same run. lag = events not yet processed "
                "when the condition ended (Kafka: the worker group's lag); missed = bursts with no alert within "
                f"{ALERT_TIMEOUT_S:.0f} s (not in p50/p99). other alerts = alerts for the "
                "background users (should be 0).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="bursts per condition (default 20)")
    p.add_argument("--rate", type=int, default=10_000, help="background events/s (default 10,000)")
    p.add_argument("--users", default="100,1000", help="background user counts, comma-separated")
    p.add_argument("--paths", default="kafka,embedded", help="kafka, embedded or both")
    p.add_argument("--files", type=int, default=40, help="files per burst (default 40)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    setup_logging(args.verbose)
    console = make_console()
    results = run(args.runs, args.rate, tuple(int(u) for u in args.users.split(",") if u),
                  tuple(x.strip() for x in args.paths.split(",") if x.strip()), args.files, console)
    report(console, results)


if __name__ == "__main__":
    main()
