"""The stream core: decode_batch + detect over encoded events, against msgspec decoding alone.

The workload is 50 users' mixed create/update/rename/delete spread over hours, plus one user
renaming 2% of the events to .locked at LockBit speed. Messages go through in batches of 5,000
(the embedded mode's take size) with one state mapping kept across batches, as in a worker.
"""
from __future__ import annotations

import gc
import time

import msgspec
from rich.console import Console

from bench.common import (
    BURST_USER,
    Result,
    chunks,
    make_workload,
    progress,
    render,
    standalone,
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


def run(events: int, console: Console) -> list[Result]:
    workload = make_workload(events)
    messages = [RawMessage(e.user_name.encode(), encode(e), "bench:0:0") for e in workload]
    values = [m.value for m in messages]
    n = len(messages)
    policy = load_policy()
    decoder = msgspec.json.Decoder(AccessEvent)

    def decode_only() -> None:
        for batch in chunks(values, BATCH):
            [decoder.decode(v) for v in batch]

    def decode_batches() -> None:
        for batch in chunks(messages, BATCH):
            decode_batch(batch, NOW_MS)

    def core() -> tuple[dict[str, bytes], list, int]:
        state: dict[str, bytes] = {}
        alerts: list = []
        processed = 0
        for batch in chunks(messages, BATCH):
            out = decode_batch(batch, NOW_MS)
            alerts.extend(detect(state, out.events, policy))
            processed += len(out.events)
        return state, alerts, processed

    # Best of REPEATS, each after a full collection: the first pass over 200k fresh objects pays
    # for the garbage collector's generations, which is order, not code.
    best = {"decode": float("inf"), "decode_batch": float("inf"), "core": float("inf")}
    with progress(console) as prog:
        task = prog.add_task("decode / decode_batch / +detect", total=REPEATS * 3)
        for _ in range(REPEATS):
            for name, fn in (("decode", decode_only), ("decode_batch", decode_batches), ("core", core)):
                gc.collect()
                t0 = time.perf_counter()
                ret = fn()
                best[name] = min(best[name], time.perf_counter() - t0)
                if name == "core":
                    state, alerts, processed = ret
                prog.advance(task)
    decode_s, decode_batch_s, core_s = best["decode"], best["decode_batch"], best["core"]

    if processed != n:
        raise RuntimeError(f"decoded {processed} of {n} events")
    burst_alerts = [a for a in alerts if a.user == BURST_USER and a.rule == "mass_rename"]
    if not burst_alerts or len(burst_alerts) != len(alerts):
        raise RuntimeError(f"expected mass_rename alerts for {BURST_USER} only, got "
                           f"{[(a.user, a.rule) for a in alerts]}")
    severities = ",".join(a.severity.value for a in alerts)
    results = [
        timed_result(BENCH, "msgspec decode alone", n, decode_s, baseline=True),
        timed_result(BENCH, "decode_batch (decode + dead-letter check)", n, decode_batch_s),
        timed_result(BENCH, "decode_batch + detect (50 users)", n, core_s,
                     extra={"alerts": f"{len(alerts)} ({severities})", "users in state": len(state)}),
    ]
    return with_rate_ratios(results)


def report(console: Console, results: list[Result]) -> None:
    render(console, "Detect: the stream core (rate = events/s, one thread)", results,
           note=f"{results[0].count:,} JSON events, {BATCH:,} per batch; faust users report 300-500 msg/s "
                "per worker one event at a time.")


def main() -> None:
    standalone(__doc__, BENCH, run, report)


if __name__ == "__main__":
    main()
