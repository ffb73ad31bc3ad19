"""The stream core: decode_batch + detect over encoded events, against msgspec decoding alone.

The workload is 50 users' mixed create/update/rename/delete spread over hours, plus one user
renaming 2% of the events to .locked at LockBit speed. Messages go through in batches of 5,000
(the embedded mode's take size) with one state mapping kept across batches, as in a worker.

``--before REF``: the same decode_batch + detect row with the stream/detectors/schemas code of git
REF, run in a subprocess from an archive of that commit, for a before/after in one run.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from rich.console import Console

from bench.agent import older_tree
from bench.common import (
    BURST_USER,
    REPO,
    Result,
    chunks,
    make_workload,
    progress,
    render,
    setup_logging,
    standalone_before,
    timed_result,
    with_rate_ratios,
)
from dwcore.detectors.policy import load_policy
from dwcore.schemas.codec import encode
from dwcore.schemas.event import AccessEvent
from dwcore.stream.processing import RawMessage, decode_batch, detect

BENCH = "detect"
BATCH = 5_000
NOW_MS = 1_767_254_400_000
REPEATS = 3


def _messages(events: int) -> list[RawMessage]:
    return [RawMessage(e.user_name.encode(), encode(e), "bench:0:0") for e in make_workload(events)]


def _core(messages: list[RawMessage], policy) -> tuple[dict[str, bytes], list, int]:
    state: dict[str, bytes] = {}
    alerts: list = []
    processed = 0
    for batch in chunks(messages, BATCH):
        out = decode_batch(batch, NOW_MS)
        alerts.extend(detect(state, out.events, policy))
        processed += len(out.events)
    return state, alerts, processed


def _best_core(messages: list[RawMessage], policy) -> tuple[float, float, list, int, int]:
    """Best wall and CPU seconds of REPEATS runs, each after a full collection (the first pass
    over 200k fresh objects pays for the garbage collector's generations, which is order, not code)."""
    wall = cpu = float("inf")
    for _ in range(REPEATS):
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        state, alerts, processed = _core(messages, policy)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu, alerts, processed, len(state)


def child(events: int) -> None:
    """``--child N``: the core row with whatever ``dwcore`` is first on the path; one JSON line."""
    from dwcore.stream.processing import prepare

    setup_logging(False)
    messages = _messages(events)
    policy = load_policy()
    prepare(policy)
    wall, cpu, alerts, processed, users = _best_core(messages, policy)
    print(json.dumps({"wall": wall, "cpu": cpu, "processed": processed, "users": users,
                      "alerts": [[a.user, a.rule, a.severity.value] for a in alerts]}), flush=True)


def _before(ref: str, events: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="dw-bench-detect-") as tmp:
        code = older_tree(ref, Path(tmp), ("agents", "schemas", "detectors", "stream"))
        # Started outside the checkout, so that its own dwcore/ is not first on the path.
        env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{REPO}"}
        out = subprocess.run([sys.executable, "-m", "bench.detect", "--child", str(events)], cwd=code, env=env,
                             capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _alerts_text(alerts: list[list[str]]) -> str:
    anomalies = sum(1 for _, rule, _ in alerts if rule == "behaviour_anomaly")
    return f"{len(alerts)} ({anomalies} behaviour_anomaly)" if anomalies else \
        f"{len(alerts)} ({','.join(sev for _, _, sev in alerts)})"


def run(events: int, console: Console, before: str | None = None) -> list[Result]:
    from dwcore.stream.processing import prepare

    messages = _messages(events)
    values = [m.value for m in messages]
    n = len(messages)
    policy = load_policy()
    prepare(policy)
    decoder = msgspec.json.Decoder(AccessEvent)

    def decode_only() -> None:
        for batch in chunks(values, BATCH):
            [decoder.decode(v) for v in batch]

    def decode_batches() -> None:
        for batch in chunks(messages, BATCH):
            decode_batch(batch, NOW_MS)

    best = {"decode": float("inf"), "decode_batch": float("inf")}
    old = None
    with progress(console) as prog:
        task = prog.add_task("decode / decode_batch / +detect" + (f" / +detect of {before}" if before else ""),
                             total=REPEATS * 2 + 1 + (1 if before else 0))
        if before:
            old = _before(before, events)
            prog.advance(task)
        for _ in range(REPEATS):
            for name, fn in (("decode", decode_only), ("decode_batch", decode_batches)):
                gc.collect()
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
                prog.advance(task)
        core_s, core_cpu, alerts, processed, users = _best_core(messages, policy)
        prog.advance(task)

    if processed != n:
        raise RuntimeError(f"decoded {processed} of {n} events")
    burst_alerts = [a for a in alerts if a.user == BURST_USER and a.rule == "mass_rename"]
    if not burst_alerts or len(burst_alerts) != len(alerts):
        raise RuntimeError(f"expected mass_rename alerts for {BURST_USER} only, got "
                           f"{[(a.user, a.rule) for a in alerts]}")

    def per_event(seconds: float, cpu: float, alerts_text: str, users: int) -> dict:
        return {"µs/event": round(seconds / n * 1e6, 1), "cpu µs/event": round(cpu / n * 1e6, 1),
                "alerts": alerts_text, "users in state": users}

    results = [
        timed_result(BENCH, "msgspec decode alone", n, best["decode"], baseline=True),
        timed_result(BENCH, "decode_batch (decode + dead-letter check)", n, best["decode_batch"]),
    ]
    if old is not None:
        results.append(timed_result(BENCH, f"decode_batch + detect, code of {before}", n, old["wall"],
                                    extra=per_event(old["wall"], old["cpu"], _alerts_text(old["alerts"]),
                                                    old["users"])))
    mine = [[a.user, a.rule, a.severity.value] for a in alerts]
    results.append(timed_result(BENCH, "decode_batch + detect (50 users)", n, core_s,
                                extra=per_event(core_s, core_cpu, _alerts_text(mine), users)))
    return with_rate_ratios(results)


def report(console: Console, results: list[Result]) -> None:
    render(console, "Detect: the stream core (rate = events/s, one thread)", results,
           note=f"{results[0].count:,} JSON events, {BATCH:,} per batch, best of {REPEATS}; load average "
                f"{os.getloadavg()[0]:.2f} at the end.")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return
    standalone_before(__doc__, BENCH, 200_000, "decode_batch + detect", run, report)


if __name__ == "__main__":
    main()
