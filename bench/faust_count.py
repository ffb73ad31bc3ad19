"""faust's own ceiling: a processor that only counts the events (`take_events` batches, no decode,
no state), on a pre-filled topic. Run by bench/worker.py as its own process (faust's worker wants
the main thread); prints one JSON line: events, seconds from the first batch to the last, CPU
seconds of the process over the same span.

    python -m bench.faust_count --bootstrap 127.0.0.1:19092 --topic T --events 50000
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import uuid

BATCH = 10_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--partitions", type=int, default=12)
    args = p.parse_args()
    import faust

    logging.basicConfig(level=logging.ERROR)
    app = faust.App(f"bench-faust-count-{uuid.uuid4().hex[:8]}", broker=f"kafka://{args.bootstrap}",
                    datadir=tempfile.mkdtemp(prefix="dw-bench-faust-"), web_enabled=False,
                    consumer_auto_offset_reset="earliest", topic_partitions=args.partitions)
    source = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "t0": 0.0, "cpu0": 0.0}

    @app.agent(source)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(BATCH, within=0.2):
            if not seen["n"]:
                seen["t0"], seen["cpu0"] = time.perf_counter(), time.process_time()
            seen["n"] += len(batch)
            if seen["n"] >= args.events:
                print(json.dumps({"events": seen["n"], "seconds": time.perf_counter() - seen["t0"],
                                  "cpu": time.process_time() - seen["cpu0"]}), flush=True)
                os._exit(0)  # faust's shutdown takes seconds and measures nothing

    faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
