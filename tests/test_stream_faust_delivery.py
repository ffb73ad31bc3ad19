"""The worker's direct hand-off recognises faust's per-message wait, and only that one.

If a faust or mode upgrade changed how the fetcher waits, the direct path would silently stop
being taken (the worker would still be correct, at half the framework speed): these fail first.
"""
from __future__ import annotations

import inspect

from faust.transport.consumer import Consumer
from mode.utils.locks import Event

from dwcore.stream.faust_delivery import _waits_on


def test_the_flow_suspension_wait_is_recognised_and_no_other():
    flow, other = Event(), Event()
    mine, theirs = flow.wait(), other.wait()
    try:
        assert _waits_on(mine, flow)
        assert not _waits_on(theirs, flow)
    finally:
        mine.close()
        theirs.close()

    async def deliver() -> None:
        return None

    coro = deliver()
    try:
        assert not _waits_on(coro, flow)
    finally:
        coro.close()


def test_faust_still_hands_each_message_over_through_that_wait():
    source = inspect.getsource(Consumer._drain_messages)
    assert "self.wait_first(" in source and "self.suspend_flow.wait()" in source


def test_the_worker_app_uses_the_direct_consumer(tmp_path):
    from dwcore.detectors.policy import load_policy
    from dwcore.schemas.topics import Topics
    from dwcore.stream.faust_app import build_app
    from dwcore.stream.faust_delivery import DirectDeliveryConsumer, DirectDeliveryTransport

    app = build_app(load_policy(), Topics.with_prefix("t."), bootstrap="127.0.0.1:1", partitions=2,
                    app_id="test-direct", datadir=str(tmp_path))
    assert isinstance(app.transport, DirectDeliveryTransport)
    assert app.transport.Consumer is DirectDeliveryConsumer
