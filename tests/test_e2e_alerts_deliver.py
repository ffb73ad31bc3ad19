"""The distributed deliverer: `dataward alerts deliver` consumes dw.alerts from a real Kafka broker
and pages a real receiver; after a restart it neither loses nor repeats what it already sent."""
from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer

from dwcore.schemas.codec import encode
from dwcore.sinks.signing import new_secret, secret_key, verify
from tests.alertkit import make_alert
from tests.procs import run_cli, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def _produce(bootstrap, topic, alerts):
    producer = Producer({"bootstrap.servers": bootstrap})
    for a in alerts:
        producer.produce(topic, key=a.user.encode(), value=encode(a))
    assert producer.flush(10) == 0


def test_alerts_deliver_consumes_the_topic_at_least_once(tmp_path, kafka_bootstrap, kafka_topics, topic_prefix,
                                                         dataward_proc, receiver):
    rec = receiver()
    secret = new_secret()
    (tmp_path / "s").write_text(secret)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
data_dir: {tmp_path / 'deliver'}
kafka: {{bootstrap: "{kafka_bootstrap}", topic_prefix: "{topic_prefix}"}}
alerts:
  destinations:
    - {{name: oncall, kind: webhook, url: "{rec.url}", secret_file: "{tmp_path / 's'}"}}
""")
    first = [make_alert(i) for i in range(5)]
    _produce(kafka_bootstrap, kafka_topics.alerts, first)
    proc = dataward_proc("alerts", "deliver", "--config", str(cfg))
    proc.wait_ready(60)
    wait_for(lambda: len(rec.ok()) >= 5, 20, what="5 deliveries")
    assert proc.stop() == 0

    second = [make_alert(i, severity="critical", version=2) for i in range(3)]
    _produce(kafka_bootstrap, kafka_topics.alerts, second)
    proc = dataward_proc("alerts", "deliver", "--config", str(cfg))
    proc.wait_ready(60)
    wait_for(lambda: len(rec.ok()) >= 8, 20, what="3 more deliveries")
    time.sleep(0.5)  # nothing else should arrive: a repeat would show up here
    key = secret_key(secret)
    ids = [verify(key, r.headers, r.body, now_s=time.time()) for r in rec.requests]
    assert ids == [f"{a.uid}_v{a.version}" for a in first + second]
    assert proc.stop() == 0
    res = run_cli("query", "SELECT alert_uid, alert_version, status FROM deliveries", "--data-dir",
                  str(tmp_path / "deliver"), "--format", "json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert sorted((r["alert_uid"], r["alert_version"]) for r in rows) == sorted((a.uid, a.version)
                                                                                 for a in first + second)
    assert {r["status"] for r in rows} == {"delivered"}
