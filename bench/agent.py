"""File agent capture: a burst of file creations, captured (and published) by each backend.

One writer process creates N files while the capture process (its own process, as the agent
runs) is stopped, so the whole burst waits in the kernel's inotify queue; then the capture is
resumed and drains it: the rate is the capture's, not the writer's. Rows, all from the same run:
- inotifywait (inotify-tools, C) counting the creations: the baseline for capture;
- the lean inotify backend alone (events built, nothing published);
- the watchdog backend alone (the portable one);
- the lean backend + content sampling + KafkaPublisher (spool + Kafka, until every event is acked);
- the same + the fast path (the detectors on every event, in their own thread, as `dataward agent
  file` runs them), done when every event is acked and evaluated;
- with ``--before REF``: the capture + publish row again with the agent code of git REF (same
  bench driver, older ``agents/``, ``schemas/``, ``detectors/``), for a before/after in one run;
- a bare confluent-kafka Producer sending as many messages of the same size: the publish baseline.
Rate = creations captured (or events acked) per second from the resume to the last; CPU = seconds
of CPU the capture process used for it, and "per cpu-s" the events per CPU-second (the capacity
of one core); RSS = its peak resident memory.

    python -m bench.agent [--events N] [--before REF]   (installs inotify-tools with apt-get if missing)

The canary alert latency is ``bench.agent_canary``, the broker outage at full size ``bench.agent_outage``.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from rich.console import Console

from bench.common import REPO, Result, render, standalone_before, timed_result, with_rate_ratios

BENCH = "agent"


def ensure_inotifywait() -> str | None:
    path = shutil.which("inotifywait")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "inotify-tools"], capture_output=True, timeout=600)
    return shutil.which("inotifywait")


def _writer(root: str, n: int) -> subprocess.Popen:
    code = ("import os,sys\nr,n=sys.argv[1],int(sys.argv[2])\nfor i in range(n):\n"
            "    os.close(os.open(f'{r}/f{i:07d}.txt', os.O_CREAT|os.O_WRONLY, 0o644))\n")
    return subprocess.Popen([sys.executable, "-c", code, root, str(n)])


def _proc_cpu_rss(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    cpu = (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) * 1024
    return cpu, rss


def run_inotifywait(n: int) -> Result | None:
    exe = ensure_inotifywait()
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="dw-bench-agent-") as root:
        p = subprocess.Popen([exe, "-m", "-r", "-e", "create", "--format", "%f", root],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stderr is not None and p.stdout is not None
        while b"Watches established" not in p.stderr.readline():  # after "Setting up watches."
            pass
        cpu0, _ = _proc_cpu_rss(p.pid)
        # The burst lands in the kernel queue while the reader is stopped; then it drains it all.
        os.kill(p.pid, signal.SIGSTOP)
        w = _writer(root, n)
        w.wait()
        os.kill(p.pid, signal.SIGCONT)
        seen, first, last = 0, time.monotonic(), 0.0
        deadline = time.monotonic() + 120
        while seen < n and time.monotonic() < deadline:
            if not p.stdout.readline():
                break
            last = time.monotonic()
            seen += 1
        cpu1, rss = _proc_cpu_rss(p.pid)
        p.kill()
    return timed_result(BENCH, "inotifywait (C, counts creations)", seen, max(last - first, 1e-9), baseline=True,
                        extra={"cpu s": round(cpu1 - cpu0, 2), "per cpu-s": round(seen / max(cpu1 - cpu0, 0.01)),
                               "RSS MiB": round(rss / 2**20, 1), "lost": n - seen})


def capture_child(backend: str, n: int, bootstrap: str | None, fastpath: bool = False) -> None:
    """Runs in the capture process: prints one JSON line with what it measured."""
    from dwcore.agents.content import ContentSampler
    from dwcore.agents.lean_watcher import LeanWatcher
    from dwcore.agents.pipeline import ContentStage, chain
    from dwcore.agents.watcher import FileWatcher
    from dwcore.schemas.event import Activity

    root = sys.stdin.readline().strip()
    state = {"creates": 0, "events": 0, "first": 0.0, "last": 0.0}
    lock = threading.Lock()

    def count(batch: list) -> None:
        now = time.monotonic()
        with lock:
            state["events"] += len(batch)
            state["creates"] += sum(1 for e in batch if e.activity_id == Activity.CREATE)
            state["last"] = now

    publisher = None
    sink = count
    if bootstrap:
        from dwcore.agents.publisher import KafkaPublisher

        topic = f"bench-agent-{uuid.uuid4().hex[:8]}"
        spool = tempfile.mkdtemp(prefix="dw-bench-spool-")
        publisher = KafkaPublisher({"bootstrap.servers": bootstrap}, topic, Path(spool), "bench",
                                   deadletter_topic=topic + ".dl")

        def sink(batch: list) -> None:
            count(batch)
            publisher.publish(batch)

        stages: list = [ContentStage(ContentSampler())]
        if fastpath:
            from dwcore.agents.fastpath import FastPath
            from dwcore.detectors.policy import load_policy

            fp = FastPath(load_policy(), [], max_pending=10 * n)
            stages.append(fp)
        sink = chain(stages, sink)
    cls = LeanWatcher if backend == "lean" else FileWatcher
    w = cls([root], "bench", sink)
    w.start()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    print("ready", flush=True)
    resumed = float(sys.stdin.readline())  # CLOCK_MONOTONIC is system-wide: comparable across processes
    state["first"] = resumed
    deadline = time.monotonic() + 300
    while state["creates"] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    done = state["last"]
    if publisher is not None:
        while publisher.counters["acked"] < state["events"] and time.monotonic() < deadline:
            publisher.flush(0.05)
        if fastpath:
            fp.wait_idle(max(1.0, deadline - time.monotonic()))
        done = time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    w.stop(drain_s=0.2)
    out = {"creates": state["creates"], "events": state["events"], "seconds": max(done - state["first"], 1e-9),
           "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, "rss": r1.ru_maxrss * 1024,
           "acked": publisher.counters["acked"] if publisher else 0}
    if publisher is not None:
        publisher.close(5)
    print(json.dumps(out), flush=True)


def older_tree(ref: str, into: Path, parts: tuple[str, ...] = ("agents", "schemas", "detectors")) -> Path:
    """The code of git ``ref`` (``parts``) importable as ``dwcore`` from the returned directory."""
    src = into / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "dwcore", *parts],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    path = into / "py"
    shutil.copytree(src / "dwcore", path / "dwcore")
    for part in parts:
        (path / "dwcore" / part).symlink_to(src / part)
    return path


def run_capture(backend: str, n: int, bootstrap: str | None, name: str, *, fastpath: bool = False,
                code: Path | None = None) -> Result:
    """``code``: a directory holding another ``dwcore`` to run instead of this checkout's."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-agent-") as root:
        args = [sys.executable, "-m", "bench.agent", "--child", backend, str(n), bootstrap or "", str(int(fastpath))]
        env, cwd = None, REPO
        if code is not None:
            # Started outside the checkout, so that its own dwcore/ is not first on the path.
            env, cwd = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{REPO}"}, code
        p = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(root + "\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "ready"
        os.kill(p.pid, signal.SIGSTOP)  # the whole burst waits in the kernel queue, then is drained
        w = _writer(root, n)
        w.wait()
        p.stdin.write(f"{time.monotonic()}\n")
        p.stdin.flush()
        os.kill(p.pid, signal.SIGCONT)
        line = p.stdout.readline()
        p.wait(60)
    got = json.loads(line)
    count = got["acked"] if bootstrap else got["creates"]
    return timed_result(BENCH, name, count, got["seconds"], extra={
        "cpu s": round(got["cpu"], 2), "per cpu-s": round(count / max(got["cpu"], 0.01)),
        "RSS MiB": round(got["rss"] / 2**20, 1), "lost": n - got["creates"],
        "events": got["events"]})


def run_bare_producer(n: int, size: int, bootstrap: str) -> Result:
    from confluent_kafka import Producer

    from dwcore.agents.publisher import PRODUCER_DEFAULTS

    topic = f"bench-agent-bare-{uuid.uuid4().hex[:8]}"
    p = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS})
    acked = [0]

    def cb(err, _msg) -> None:
        if err is None:
            acked[0] += 1

    value = b"x" * size
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=value, key=f"user{i % 50}".encode(), on_delivery=cb)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    p.flush(120)
    seconds = time.monotonic() - start
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return timed_result(BENCH, f"bare Producer ({size} B messages)", acked[0], seconds,
                        extra={"events": n, "cpu s": round(cpu, 2), "per cpu-s": round(acked[0] / max(cpu, 0.01))})


def run(n: int, console: Console, before: str | None = None) -> list[Result]:
    from bench.publish import bootstrap as kafka_bootstrap
    from dwcore.schemas.codec import encode
    from dwcore.schemas.event import Activity, make_event

    capture: list[Result] = []
    base = run_inotifywait(n)
    if base is not None:
        capture.append(base)
    else:
        console.print("[yellow]inotifywait missing and could not be installed: no capture baseline[/yellow]")
    capture.append(run_capture("lean", n, None, "lean inotify backend (capture only)"))
    capture.append(run_capture("watchdog", n, None, "watchdog backend (capture only)"))
    bs = kafka_bootstrap()
    sample = make_event(Activity.CREATE, uid=uuid.uuid4().hex, time=1, user_name="alice", device="bench",
                        file_path="/tmp/dw-bench-agent-xxxxxxxx/f0000000.txt", file_size=0, entropy=0.0,
                        magic_type="empty", share="/tmp/dw-bench-agent-xxxxxxxx", user_uid="1000")
    publish = [run_bare_producer(n, len(encode(sample)), bs)]
    publish[0].baseline = True
    if before:
        with tempfile.TemporaryDirectory(prefix="dw-bench-before-") as tmp:
            code = older_tree(before, Path(tmp))
            publish.append(run_capture("lean", n, bs, f"lean + content + KafkaPublisher (acked), code of {before}",
                                       code=code))
    publish.append(run_capture("lean", n, bs, "lean + content + KafkaPublisher (acked)"))
    publish.append(run_capture("lean", n, bs, "lean + content + KafkaPublisher + fast path (acked, evaluated)",
                               fastpath=True))
    return with_rate_ratios(capture) + with_rate_ratios(publish)


def report(console: Console, results: list[Result]) -> None:
    cap = [r for r in results if "acked" not in r.name and "Producer" not in r.name]
    pub = [r for r in results if r not in cap]
    load = os.getloadavg()
    note = (f"{results[0].count:,} files created by one writer process; capture in its own process; "
            f"load average now {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    render(console, "File agent capture (rate = creations captured per second)", cap, note=note)
    render(console, "File agent capture + publish (rate = events acked by Kafka per second)", pub, note=note)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        capture_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] or None, sys.argv[5] == "1")
        return
    standalone_before(__doc__, BENCH, 20_000, "capture + publish", run, report)


if __name__ == "__main__":
    main()
