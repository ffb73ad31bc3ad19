"""faust's own per-message path, with nothing else: an agent that takes batches and drops them.

Run by bench.worker beside `dataward worker` on the same topic: the events/s this reaches is the
ceiling of any faust worker on this machine, whatever its body does. It uses the worker's own
batching (take_events, same batch size and window) and the same consumer settings.

    python -m bench.worker_ceiling BOOTSTRAP TOPIC N [direct]   -> prints "ceiling: <events> <seconds>"

With ``direct``, faust's consumer hands messages to the stream as the worker's does
(stream/faust_delivery.py): the ceiling of the worker's own framework path.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from typing import Any

import faust

from dwcore.stream.faust_app import BATCH_MAX, BATCH_WITHIN_S
from dwcore.stream.faust_delivery import DirectDeliveryTransport


class _DirectApp(faust.App):
    def _new_transport(self) -> Any:
        return DirectDeliveryTransport(self.conf.broker_consumer, self)


def main(servers: str, topic: str, n: int, direct: bool) -> None:
    app = (_DirectApp if direct else faust.App)(f"bench-ceiling-{uuid.uuid4().hex[:8]}", broker=f"kafka://{servers}", store="memory://",
                    datadir=tempfile.mkdtemp(prefix="dw-bench-ceiling-"), web_enabled=False,
                    consumer_auto_offset_reset="earliest", topic_partitions=12)
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    seen = 0
    started = 0.0

    @app.agent(source)
    async def drop(stream: faust.StreamT) -> None:
        nonlocal seen, started
        async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):  # type: ignore[attr-defined]
            if not seen:
                started = time.perf_counter()
            seen += len(batch)
            if seen >= n:
                print(f"ceiling: {seen} {time.perf_counter() - started:.4f}", flush=True)
                os._exit(0)  # measured; nothing to shut down cleanly

    sys.argv = [sys.argv[0], "--quiet", "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["direct"])
