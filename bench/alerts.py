"""Alert delivery latency: detection -> the receiver's 2xx, for a signed webhook on 127.0.0.1.

1. In process, one alert at a time: ``AlertRouter.commit`` (outbox append + fsync) -> deliverer
   thread -> signed POST -> receiver, against the baseline of the same signed POST sent directly
   (no outbox, no thread hand-off).
2. The embedded mode end to end (``EmbeddedPipeline`` with a webhook destination), a 300-file
   rename burst per run by an attacker process: from the on_alert callback (the moment the alert
   shows on the console) and from the first rename to the receiver's 2xx of the first alert
   version. Per-user state is cleared before each run, so every run is a first burst.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rich.console import Console

from bench.common import Result, make_console, progress, render, save, setup_logging
from bench.latency import Attacker, settle, wait_for
from dataward.config import AgentConfig, AlertsConfig, Config, DestinationConfig
from dataward.embedded import EmbeddedPipeline
from dwcore.detectors.policy import load_policy
from dwcore.schemas.alert import Alert, Severity
from dwcore.sinks.alert_router import AlertRouter
from dwcore.sinks.alert_routing import Destination
from dwcore.sinks.deliverer import send_once
from dwcore.sinks.signing import new_secret

BENCH = "alerts"


class Receiver:
    """Notes time.monotonic() when each request arrives, answers 200."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.cond:
                    receiver.arrivals.append((time.monotonic(), self.headers.get("webhook-id", "")))
                    receiver.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, n: int, timeout_s: float = 10.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.arrivals) >= n, timeout_s):
                raise RuntimeError(f"receiver got {len(self.arrivals)} of {n} requests")
            return self.arrivals[n - 1][0]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _alert(i: int) -> Alert:
    now = int(time.time() * 1000)
    return Alert(uid=f"bench-{i:06d}", title="bench", rule="mass_rename", rule_uid="r", severity=Severity.HIGH,
                 severity_id=4, user="mallory", first_seen=now, detected_at=now, signal="renames", observed=30,
                 threshold=25, window_s=10, file_count=30, paths=[f"/srv/share/f{j}.locked" for j in range(10)])


def _pcts(ms: list[float]) -> dict[str, float | int | str]:
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"p50 ms": statistics.median(ms), "p99 ms": q[98], "max ms": max(ms)}


def in_process(count: int, console: Console) -> list[Result]:
    secret = new_secret()
    receiver = Receiver()
    dest = Destination(name="bench", kind="webhook", url=receiver.url, secret=secret)
    direct: list[float] = []
    routed: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dw-bench-alerts-") as tmp, progress(console) as prog:
            task = prog.add_task("alerts, one at a time", total=2 * count)
            for i in range(count):
                t0 = time.monotonic()
                send_once(dest, [_alert(i)], 1, int(time.time() * 1000))
                direct.append((receiver.wait(i + 1) - t0) * 1000)
                prog.advance(task)
            router = AlertRouter(Path(tmp) / "outbox", [dest])
            router.start()
            try:
                for i in range(count):
                    t0 = time.monotonic()
                    router.commit([_alert(count + i)])
                    routed.append((receiver.wait(count + i + 1) - t0) * 1000)
                    prog.advance(task)
            finally:
                router.stop()
    finally:
        receiver.stop()
    base = statistics.median(direct)
    return [
        Result(bench=BENCH, name="signed POST sent directly", count=count, seconds=base / 1000, rate=None,
               ratio=1.0, baseline=True, extra=_pcts(direct)),
        Result(bench=BENCH, name="commit -> outbox (fsync) -> deliverer -> 2xx", count=count,
               seconds=statistics.median(routed) / 1000, rate=None, ratio=statistics.median(routed) / base,
               extra=_pcts(routed)),
    ]


def end_to_end(files: int, runs: int, console: Console) -> list[Result]:
    receiver = Receiver()
    attacker = Attacker()
    detect_ms: list[float] = []
    rename_ms: list[float] = []
    console_ms: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dw-bench-alerts-e2e-") as tmp:
            root = Path(tmp) / "watch"
            root.mkdir()
            secret_file = Path(tmp) / "secret"
            secret_file.write_text(new_secret())
            config = Config(data_dir=str(Path(tmp) / "data"), agent=AgentConfig(device="bench", tune_inotify=False),
                            alerts=AlertsConfig(destinations=[DestinationConfig(
                                name="bench", kind="webhook", url=receiver.url, secret_file=str(secret_file))]))
            shown: list[float] = []
            pipeline = EmbeddedPipeline(config, load_policy(), [str(root)],
                                        on_alert=lambda a: shown.append(time.monotonic()))
            pipeline.start()

            class Seen:
                name = "pipeline"
                detected_at = None

                def seen(self) -> int:
                    return pipeline.events_processed

            target = Seen()
            try:
                with progress(console) as prog:
                    task = prog.add_task("rename bursts", total=runs)
                    for run_no in range(runs):
                        sub = root / f"run-{run_no}"
                        before = target.seen()
                        sub.mkdir()
                        settle(target, before + 1)  # type: ignore[arg-type]
                        before = target.seen()
                        attacker.create(sub, files)
                        settle(target, before + files)  # type: ignore[arg-type]
                        pipeline.state.clear()
                        shown.clear()
                        n_before = len(receiver.arrivals)
                        t0, _done = attacker.rename(sub, files, 0)
                        arrived = receiver.wait(n_before + 1)
                        wait_for(lambda: bool(shown), 5)
                        rename_ms.append((arrived - t0) * 1000)
                        console_ms.append((shown[0] - t0) * 1000)
                        detect_ms.append((arrived - shown[0]) * 1000)
                        settle(target, 0)  # type: ignore[arg-type]
                        prog.advance(task)
            finally:
                pipeline.stop()
    finally:
        attacker.close()
        receiver.stop()
    base = statistics.median(console_ms)
    return [
        Result(bench=BENCH, name="first rename -> alert on the console", count=runs, seconds=base / 1000, rate=None,
               ratio=1.0, baseline=True, extra=_pcts(console_ms)),
        Result(bench=BENCH, name="first rename -> receiver 2xx", count=runs,
               seconds=statistics.median(rename_ms) / 1000, rate=None, ratio=statistics.median(rename_ms) / base,
               extra=_pcts(rename_ms)),
        Result(bench=BENCH, name="detection (console) -> receiver 2xx", count=runs,
               seconds=statistics.median(detect_ms) / 1000, rate=None, ratio=None, extra=_pcts(detect_ms)),
    ]


def report(console: Console, results: list[Result]) -> None:
    render(console, "Alert delivery latency (signed webhook on 127.0.0.1)", results, count_label="alerts/runs",
           seconds_label="median s", rate_label=None, ratio_label="x baseline",
           note="In process: one alert at a time against a direct POST. End to end: 300-file rename bursts "
                "at full speed by an attacker process; the detection is the moment on_alert runs.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else BENCH)
    p.add_argument("--alerts", type=int, default=200, help="alerts for the in-process part")
    p.add_argument("--files", type=int, default=300, help="files per rename burst")
    p.add_argument("--runs", type=int, default=10, help="rename bursts")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    setup_logging(args.verbose)
    console = make_console()
    results = in_process(args.alerts, console) + end_to_end(args.files, args.runs, console)
    report(console, results)
    save(results, BENCH)


if __name__ == "__main__":
    main()
