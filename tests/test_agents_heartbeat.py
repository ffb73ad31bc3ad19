"""Heartbeats: the agent says it is alive every N seconds on dw.heartbeats; rows fit the table."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dataward.config import load_config
from dataward.distributed import run_file_agent
from dwcore.agents.heartbeat import Heartbeater
from dwcore.schemas.ddl import HEARTBEAT_COLUMNS, HEARTBEATS_TABLE
from dwcore.schemas.heartbeat import Heartbeat, decode_heartbeat
from dwcore.sinks.store import Store
from tests.test_agents_kafka import consume


def test_lag_and_status_follow_the_publisher() -> None:
    now = [1000.0]
    stats = [(10, 0, 10, False)]
    sent: list[Heartbeat] = []
    hb = Heartbeater("fs1", "0.1.0", 0, lambda: stats[0], sent.append, clock=lambda: now[0])
    assert hb.beat().lag_ms is None and sent[-1].status == "ok"
    stats[0] = (20, 10, 10, False)  # ten events pending, no ack since
    now[0] += 5
    assert hb.beat().lag_ms == 5000
    now[0] += 40
    assert hb.beat().status == "kafka_unreachable"
    stats[0] = (20, 10, 10, True)
    assert hb.beat().status == "spool_full"


@pytest.mark.kafka
def test_agent_heartbeats_reach_kafka_and_fit_the_heartbeats_table(kafka_bootstrap, kafka_topics, topic_prefix,
                                                                    tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    config = load_config(overrides={"data_dir": str(tmp_path / "data"), "agent": {"device": "fs01"},
                                    "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix},
                                    "capture": {"heartbeat_s": 0.2}}, env={})
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: run_file_agent(config, [str(share)], stop, ready.set, tune_inotify=False))
    t.start()
    try:
        assert ready.wait(30)
        (share / "a.txt").write_text("x")
        got = [decode_heartbeat(m.value()) for m in consume(kafka_bootstrap, kafka_topics.heartbeats, 3, timeout=30)]
    finally:
        stop.set()
        t.join(60)
    assert len(got) >= 3 and all(h.device == "fs01" and h.agent == "file" and h.version for h in got)
    assert any(h.events_seen >= 1 for h in got)  # the write above is counted
    assert all(h.spool_depth >= 0 and h.status in ("ok", "kafka_unreachable") for h in got)
    with Store.open(f"chdb://{tmp_path / 'chdb'}") as store:
        store.writer.ensure_schema()
        assert store.writer.insert(HEARTBEATS_TABLE, HEARTBEAT_COLUMNS, got) == len(got)
