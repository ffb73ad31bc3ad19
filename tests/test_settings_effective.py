"""Settings that must change what a process does: agent.watch without --watch, and the store's
batch_rows / flush_interval_s in the distributed sink (`dataward sink clickhouse`)."""
from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Consumer, Producer

from dwcore.schemas.codec import encode
from dwcore.schemas.event import Activity, make_event
from tests.procs import run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka]


def test_agent_watch_from_the_config_file_without_the_flag(tmp_path, kafka_bootstrap, kafka_topics, topic_prefix,
                                                          dataward_proc):
    share = tmp_path / "share"
    share.mkdir()
    cfg = tmp_path / "dataward.yaml"
    cfg.write_text(f"agent:\n  watch: [{json.dumps(str(share))}]\n  device: cfgwatch\n")
    agent = dataward_proc("agent", "file", "-c", str(cfg), "--bootstrap", kafka_bootstrap, "--topic-prefix",
                          topic_prefix, "--data-dir", str(tmp_path / "a"))
    agent.wait_ready(60)
    assert any("agent watching 1 dirs" in line for line in agent.lines)
    (share / "from-config.txt").write_text("hello")
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"cw-{time.time_ns()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([kafka_topics.events])
    try:
        def seen() -> bool:
            msg = consumer.poll(0.2)
            return msg is not None and msg.error() is None and b"from-config.txt" in msg.value()

        wait_for(seen, 60, interval=0, what="the event of a file under agent.watch")
    finally:
        consumer.close()


def test_nothing_to_watch_is_a_clear_error(tmp_path):
    res = run_cli("agent", "file", "--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path / "a"))
    assert res.returncode == 2
    assert "nothing to watch" in res.stderr and "agent.watch" in res.stderr
    res = run_cli("agent", "file", "--data-dir", str(tmp_path / "a"),
                  env={"DATAWARD_AGENT_WATCH": str(tmp_path / "no")})
    assert res.returncode == 2 and "not a directory" in res.stderr


def _stored(data_dir) -> int:
    res = run_cli("query", "SELECT count() AS n FROM events", "--data-dir", str(data_dir), "--format", "json")
    assert res.returncode == 0, res.stderr
    return int(json.loads(res.stdout)[0]["n"])


def test_sink_batches_by_store_batch_rows_and_flush_interval(tmp_path, kafka_bootstrap, kafka_topics, topic_prefix,
                                                            dataward_proc):
    data_dir = tmp_path / "sink"
    sink = dataward_proc("sink", "clickhouse", "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix,
                         "--data-dir", str(data_dir),
                         env={"DATAWARD_STORE_BATCH_ROWS": "7", "DATAWARD_STORE_FLUSH_INTERVAL_S": "20"})
    sink.wait_ready(120)
    now = time.time_ns() // 1_000_000
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50})
    for i in range(20):
        ev = make_event(Activity.UPDATE, uid=f"b{i:03d}", time=now + i, user_name="batchy", device="fs1",
                        file_path=f"/srv/b/{i}.bin")
        producer.produce(kafka_topics.events, key=b"batchy", value=encode(ev))
    assert producer.flush(30) == 0
    produced = time.monotonic()
    # Two full batches of 7 go in at once; the 6 left wait for the flush interval (20 s, long enough
    # for a `dataward query` on a loaded machine), where the defaults (10,000 rows, 1 s) would store
    # all 20 in one batch about a second later.
    assert wait_for(lambda: _stored(data_dir) >= 14, 60, what="two batches of 7") and _stored(data_dir) == 14
    wait_for(lambda: _stored(data_dir) == 20, 90, what="the partial batch after the flush interval")
    assert time.monotonic() - produced >= 15.0
