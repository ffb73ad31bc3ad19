"""End to end in the distributed mode, on a real Kafka broker: agent -> dw.events -> faust worker
-> dw.alerts, and the ClickHouse sink writing events and alerts; plus the dead-letter path."""
from __future__ import annotations

import json
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer

from dataward.simulate import simulate_rename
from tests.procs import run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka]


def _query(data_dir, sql):
    res = run_cli("query", sql, "--data-dir", str(data_dir), "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _drain(bootstrap: str, topic: str, idle_s: float = 3.0) -> list:
    """Every message on a topic, read from the start until it stays quiet for idle_s."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out, last = [], time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
                    last = time.monotonic()
    finally:
        consumer.close()
    return out


def test_distributed_attack_alert_in_clickhouse_and_no_event_missing(
    tmp_path, kafka_bootstrap, kafka_topics, topic_prefix, dataward_proc
):
    watched, sink_dir, agent_dir = tmp_path / "watched", tmp_path / "sink", tmp_path / "agent"
    watched.mkdir()
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix]
    jsonl = tmp_path / "alerts.jsonl"
    sink = dataward_proc("sink", "clickhouse", *common, "--data-dir", str(sink_dir), "--alerts-jsonl", str(jsonl))
    worker = dataward_proc("worker", *common, "--data-dir", str(tmp_path / "worker"))
    agent = dataward_proc("agent", "file", "--watch", str(watched), *common, "--data-dir", str(agent_dir),
                          "--device", "fs-test-1")
    for proc in (sink, worker, agent):
        proc.wait_ready(90)

    # Watch dw.alerts directly too: the time an on-call integration would see the alert.
    alert_seen: dict[str, float] = {}
    watching = threading.Event()

    def watch_alerts():
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"w-{time.time_ns()}",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([kafka_topics.alerts])
        deadline = time.monotonic() + 30
        try:
            while "t" not in alert_seen and time.monotonic() < deadline:
                msg = consumer.poll(0.05)
                watching.set()
                if msg is not None and msg.error() is None and b"mass_rename" in msg.value():
                    alert_seen["t"] = time.time()
        finally:
            consumer.close()

    watcher = threading.Thread(target=watch_alerts, daemon=True)
    watcher.start()
    watching.wait(10)

    t_first_rename = time.time()
    simulate_rename(watched, 300, ".locked", show_progress=False)

    def alert_rows():
        return _query(sink_dir, "SELECT rule, severity, user, file_count, detected_at FROM alerts FINAL "
                                "WHERE arrayExists(e -> tupleElement(e, 'name') = 'mass_rename', evidences)")

    rows = wait_for(alert_rows, 10, interval=0.2, what="mass_rename alert in ClickHouse within 10 s")
    latency = time.time() - t_first_rename
    watcher.join(20)
    assert "t" in alert_seen, "no mass_rename alert on the alerts topic"
    print(f"distributed: first rename -> alert on {kafka_topics.alerts} "
          f"{(alert_seen['t'] - t_first_rename) * 1000:.0f} ms; seen in ClickHouse by polling {latency * 1000:.0f} ms")
    assert rows[0]["severity"] in ("high", "critical")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert any(any(e["name"] == "mass_rename" for e in a["evidences"]) and a["severity"] in ("high", "critical")
               for a in lines)

    # Zero events missing: every event the agent published is in ClickHouse, once.
    published = _drain(kafka_bootstrap, kafka_topics.events)
    uids = {json.loads(m.value())["uid"] for m in published}
    assert len(published) >= 600  # 300 creates + 300 renames at least (writes add modify events)

    def stored():
        got = _query(sink_dir, "SELECT count() AS n, uniqExact(uid) AS u FROM events")[0]
        return got if got["n"] >= len(uids) else None

    got = wait_for(stored, 20, interval=0.5, what="all events in ClickHouse")
    assert got == {"n": len(uids), "u": len(uids)}
    renamed = _query(sink_dir, "SELECT file_new_path FROM events WHERE activity_name = 'Rename'")
    assert {r["file_new_path"] for r in renamed} == {
        str(watched / "dataward-selftest" / f"sample-{i:05d}.csv.locked") for i in range(300)
    }
    # The drill on the same cluster, while the attack's incident is still open: its own alert,
    # read back from the sink's store, tagged as a drill; nothing of it is left in the share.
    drill = run_cli("simulate", "rename", str(watched), "--data-dir", str(sink_dir), "--files", "60",
                    "--timeout", "60", timeout=120)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "drill detected: critical" in drill.stdout
    assert not list(watched.glob(".dataward-drill-*"))
    drills = _query(sink_dir, "SELECT DISTINCT uid FROM alerts WHERE drill")
    assert len(drills) == 1 and drills[0]["uid"] in drill.stdout
    for proc in (agent, worker, sink):
        assert proc.stop() == 0


def test_malformed_message_goes_to_deadletter_with_reason(
    tmp_path, kafka_bootstrap, kafka_topics, topic_prefix, dataward_proc
):
    worker = dataward_proc("worker", "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix,
                           "--data-dir", str(tmp_path / "worker"))
    worker.wait_ready(90)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(kafka_topics.events, key=b"mallory", value=b'{"uid": "x", "time": "yesterday"}')
    producer.produce(kafka_topics.events, key=b"mallory", value=b"\x00\xffnot json")
    producer.flush(10)

    def dead():
        msgs = _drain(kafka_bootstrap, kafka_topics.deadletter, idle_s=1.0)
        return msgs if len(msgs) >= 2 else None

    msgs = wait_for(dead, 30, interval=0.5, what="two dead letters")
    records = [json.loads(m.value()) for m in msgs]
    reasons = sorted(r["reason"] for r in records)
    assert all(r.startswith("invalid event") for r in reasons)
    assert any("time" in r for r in reasons)
    assert all(r["source"].startswith(kafka_topics.events + ":") for r in records)
    # The original bytes are kept whole (base64 in JSON), so nothing is lost.
    import base64

    assert sorted(base64.b64decode(r["raw"]) for r in records) == sorted(
        [b'{"uid": "x", "time": "yesterday"}', b"\x00\xffnot json"]
    )
    assert worker.stop() == 0
