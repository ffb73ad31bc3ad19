"""The spool's size cap (a loud spool_full alarm, events kept in memory and still delivered) and
delivery reports served by flush() in another thread than publish()."""
from __future__ import annotations

import threading

import pytest

from dwcore.agents.spool import Spool, SpoolFullError
from dwcore.schemas.codec import decode_event
from tests.test_agents_kafka import consume, events, publisher

pytestmark = pytest.mark.kafka


def test_spool_refuses_a_batch_beyond_its_cap_and_writes_nothing(tmp_path):
    sp = Spool(tmp_path / "spool", max_bytes=1000)
    sp.append([(b"k", b"x" * 400)])
    with pytest.raises(SpoolFullError, match="cap"):
        sp.append([(b"k", b"y" * 700)])
    assert sp.pending == 1 and sp.size_bytes < 1000
    sp.close()
    assert Spool(tmp_path / "spool").pending == 1  # what was spooled survives; the refused batch was never half-written


def test_full_spool_raises_an_alarm_and_still_delivers_from_memory(kafka_bootstrap, kafka_topics, tmp_path):
    pub = publisher(kafka_bootstrap, kafka_topics, tmp_path / "spool", spool_max_bytes=3000)
    sent = events(60)
    for i in range(0, 60, 10):
        pub.publish(sent[i : i + 10])
    assert pub.counters["spool_full"] >= 1
    assert pub.close(30) == 0
    got = [decode_event(m.value()) for m in consume(kafka_bootstrap, kafka_topics.events, 61)]
    alarms = [e for e in got if e.alarm == "spool_full"]
    assert len(alarms) == 1 and "held in memory" in (alarms[0].message or "")
    assert {e.uid for e in got if not e.alarm} == {e.uid for e in sent}


def test_flush_in_one_thread_while_another_publishes(kafka_bootstrap, kafka_topics, tmp_path):
    pub = publisher(kafka_bootstrap, kafka_topics, tmp_path / "spool")
    sent = events(3000)
    errors: list[BaseException] = []

    def flusher() -> None:
        try:
            for _ in range(30):
                pub.flush(0.05)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=flusher)
    t.start()
    for i in range(0, len(sent), 100):
        pub.publish(sent[i : i + 100])
    t.join()
    assert pub.close(30) == 0 and not errors
    c = pub.counters
    assert c["acked"] == 3000 and c["errors"] == 0
    assert len({decode_event(m.value()).uid for m in consume(kafka_bootstrap, kafka_topics.events, 3000)}) == 3000
