"""faust's Kafka consumer, with its per-message hand-off made direct while the flow runs.

faust's fetcher hands each fetched message to the stream through ``Service.wait_first(deliver,
suspend_flow.wait())``: four futures and an ``asyncio.wait`` per message, so that a rebalance can
interrupt a delivery blocked on a full stream buffer. Profiled, that is the largest single cost of
a faust worker's per-message path; an agent that does nothing but take batches runs about twice as
fast without it (bench/worker.py measures the stock framework beside the worker).

While the flow is not suspended, this consumer awaits the delivery itself. Nothing the race
protected is lost: a delivery that blocks on a full buffer is still released when a rebalance
suspends the flow (faust then clears the buffers, which cancels the blocked put), and when the
consumer stops, faust cancels the fetcher task that awaits it. Any other wait, and every wait while
the flow is suspended, goes through faust's own ``wait_first``.
"""
from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka


class DirectDeliveryConsumer(faust_aiokafka.Consumer):
    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        if (len(coros) == 2 and timeout is None and not self.suspend_flow.is_set()
                and _waits_on(coros[1], self.suspend_flow)):
            coros[1].close()  # the flow-suspension wait, never started
            await coros[0]
            return None  # the fetcher ignores what the race returns
        return await super().wait_first(*coros, timeout=timeout)


def _waits_on(coro: Any, event: Any) -> bool:
    """Whether ``coro`` is ``event.wait()``, not yet started."""
    frame = getattr(coro, "cr_frame", None)
    return frame is not None and getattr(coro, "__qualname__", "") == "Event.wait" \
        and frame.f_locals.get("self") is event


class DirectDeliveryTransport(faust_aiokafka.Transport):
    Consumer = DirectDeliveryConsumer
