"""Prometheus metrics scraped over HTTP from real running processes: a file agent, a worker and a
sink on the real broker, fed real file activity and one undecodable message."""
from __future__ import annotations

import socket
import urllib.request

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of http://127.0.0.1:PORT/metrics as {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_agent_worker_and_sink_serve_their_metrics(tmp_path, kafka_bootstrap, kafka_topics, topic_prefix,
                                                   dataward_proc):
    share = tmp_path / "share"
    share.mkdir()
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix]
    ports = {name: _free_port() for name in ("agent", "worker", "sink")}
    sink = dataward_proc("sink", "clickhouse", *common, "--data-dir", str(tmp_path / "sink"),
                         env={"DATAWARD_METRICS_SINK_PORT": str(ports["sink"])})
    worker = dataward_proc("worker", *common, "--data-dir", str(tmp_path / "worker"),
                           env={"DATAWARD_METRICS_WORKER_PORT": str(ports["worker"])})
    agent = dataward_proc("agent", "file", "--watch", str(share), *common, "--data-dir", str(tmp_path / "agent"),
                          "--device", "metrics", env={"DATAWARD_METRICS_AGENT_PORT": str(ports["agent"])})
    for proc in (sink, worker, agent):
        proc.wait_ready(120)

    files = 12
    for i in range(files):
        (share / f"m{i}.txt").write_text("metrics " * 20)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(kafka_topics.events, key=b"mallory", value=b"\xff not an event")
    assert producer.flush(20) == 0

    def agent_done():
        s = scrape(ports["agent"])
        return s if value(s, "dataward_events_sent_total") >= files else None

    got = wait_for(agent_done, 60, interval=0.5, what="the agent's acked events in its metrics")
    assert value(got, "dataward_events_received_total") >= files
    assert value(got, "dataward_batch_rows_count", stage="publish") >= 1
    assert value(got, "dataward_kafka_reachable") == 1.0
    assert ("dataward_spool_pending_events", ()) in got  # a gauge read at scrape time
    assert ("process_resident_memory_bytes", ()) in got  # the library's process collector

    def worker_done():
        s = scrape(ports["worker"])
        return s if value(s, "dataward_events_received_total") >= files + 1 else None

    got = wait_for(worker_done, 60, interval=0.5, what="the worker's received events")
    assert value(got, "dataward_deadletters_total", reason="decode") == 1
    assert value(got, "dataward_batch_rows_count", stage="detect") >= 1
    assert (("dataward_consumer_lag_messages", (("topic", kafka_topics.events),)) in got)

    def sink_done():
        s = scrape(ports["sink"])
        return s if (value(s, "dataward_rows_stored_total", table="events") >= files
                     and value(s, "dataward_deadletters_total", reason="decode") >= 1
                     and value(s, "dataward_batch_rows_count", stage="store") >= 1) else None

    got = wait_for(sink_done, 60, interval=0.5, what="the sink's stored rows")
    assert value(got, "dataward_deadletters_total", reason="decode") == 1  # stored once, by the sink
    assert value(got, "dataward_batch_rows_sum", stage="store") >= files + 1
    wait_for(lambda: ("dataward_consumer_lag_messages", (("topic", kafka_topics.events),)) in scrape(ports["sink"]),
             30, interval=0.5, what="the sink's consumer lag")
    for proc in (agent, worker, sink):
        assert proc.stop() == 0


def test_metrics_are_off_by_default_and_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli("agent", "file", "--watch", str(tmp_path), "--bootstrap", "127.0.0.1:1",
                      "--data-dir", str(tmp_path / "a"), env={"DATAWARD_METRICS_AGENT_PORT": str(port)}, timeout=60)
    assert res.returncode == 2 and f"metrics port 127.0.0.1:{port}" in res.stderr
    # off unless configured, and loopback when on
    from dataward.config import MetricsConfig

    cfg = MetricsConfig()
    assert (cfg.agent_port, cfg.worker_port, cfg.sink_port, cfg.backup_port, cfg.run_port) == (0, 0, 0, 0, 0)
    assert cfg.host == "127.0.0.1"


def test_embedded_run_serves_its_metrics_and_the_backup_halt(tmp_path, moto_endpoint, s3_bucket, dataward_proc):
    """`dataward run` with a backup: events in and stored after a burst, the alert raised, and
    dataward_backup_halted goes 0 -> 1 when the attack halts the backup."""
    from dataward.simulate import simulate_rename

    share = tmp_path / "share"
    share.mkdir()
    (share / "clean.txt").write_text("clean")
    port = _free_port()
    run = dataward_proc("run", "--watch", str(share), "--data-dir", str(tmp_path / "state"),
                        "--backup-bucket", s3_bucket(), "--backup-endpoint-url", moto_endpoint,
                        env={"DATAWARD_METRICS_RUN_PORT": str(port)})
    run.wait_ready(90)
    before = scrape(port)
    assert value(before, "dataward_backup_halted") == 0.0 and value(before, "dataward_alerts_raised_total") == 0

    files = 12
    for i in range(files):
        (share / f"m{i}.txt").write_text("metrics " * 20)

    def stored():
        s = scrape(port)
        return s if value(s, "dataward_rows_stored_total", table="events") >= files else None

    got = wait_for(stored, 60, interval=0.5, what="the run's stored events in its metrics")
    assert value(got, "dataward_events_received_total") >= files
    assert value(got, "dataward_batch_rows_count", stage="detect") >= 1
    assert value(got, "dataward_backup_halted") == 0.0

    simulate_rename(share, 120, ".locked", show_progress=False)

    def halted():
        s = scrape(port)
        return s if value(s, "dataward_backup_halted") == 1.0 else None

    got = wait_for(halted, 60, interval=0.5, what="dataward_backup_halted after the attack")
    assert value(got, "dataward_alerts_raised_total") >= 1
    assert value(got, "dataward_backup_halts_total") == 1
    assert value(got, "dataward_events_received_total") >= files + 240  # creates and renames
    assert run.stop() == 0


def test_backup_controller_serves_its_metrics_and_halts(tmp_path, kafka_bootstrap, kafka_topics, topic_prefix,
                                                        moto_endpoint, s3_bucket, dataward_proc):
    """`dataward backup controller` on the real broker: an alert on dw.alerts halts the backup, and
    the scrape shows it (dataward_backup_halted 0 -> 1, one halt counted)."""
    from dwcore.schemas.alert import Alert, Severity
    from dwcore.schemas.codec import encode

    port = _free_port()
    ctl = dataward_proc("backup", "controller", "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix,
                        "--data-dir", str(tmp_path / "ctl"),
                        env={"DATAWARD_METRICS_BACKUP_PORT": str(port), "DATAWARD_BACKUP_BUCKET": s3_bucket(),
                             "DATAWARD_BACKUP_ENDPOINT_URL": moto_endpoint})
    ctl.wait_ready(90)
    before = scrape(port)
    assert value(before, "dataward_backup_halted") == 0.0 and value(before, "dataward_backup_halts_total") == 0
    assert ("process_resident_memory_bytes", ()) in before

    alert = Alert(uid="inc-metrics-1", title="Mass rename by mallory", rule="mass_rename", rule_uid="r1",
                  severity=Severity.CRITICAL, severity_id=Severity.CRITICAL.ocsf_id, user="mallory",
                  first_seen=1_700_000_000_000, detected_at=1_700_000_001_000, signal="renames", observed=200,
                  threshold=25, window_s=10, file_count=200, paths=["/srv/share/a.locked"])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(kafka_topics.alerts, key=b"mallory", value=encode(alert))
    assert producer.flush(20) == 0

    def halted():
        s = scrape(port)
        return s if value(s, "dataward_backup_halted") == 1.0 else None

    got = wait_for(halted, 60, interval=0.5, what="dataward_backup_halted after the alert")
    assert value(got, "dataward_backup_halts_total") == 1
    assert ctl.stop() == 0
