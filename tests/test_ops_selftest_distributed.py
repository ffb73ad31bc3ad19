"""`dataward selftest` against the distributed mode on the real broker: agent -> Kafka -> worker ->
dw.alerts -> ClickHouse sink, with the deliverer paging a real receiver. The drill passes with
timings; a broken chain (a directory no agent watches) fails, and its selftest_failed alert goes to
dw.alerts: the sink stores it (`dataward status` shows it) and the deliverer pages it exactly once."""
from __future__ import annotations

import json

import pytest

from dwcore.sinks.signing import new_secret
from tests.procs import run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka]


def test_selftest_distributed_passes_then_a_failure_is_stored_and_paged(
        tmp_path, kafka_bootstrap, kafka_topics, topic_prefix, dataward_proc, receiver):
    share, unwatched, sink_dir = tmp_path / "share", tmp_path / "unwatched", tmp_path / "sink"
    (share / "dataward-selftest").mkdir(parents=True)
    unwatched.mkdir()
    rec = receiver()
    (tmp_path / "webhook.secret").write_text(new_secret() + "\n")
    kafka = f'kafka: {{bootstrap: "{kafka_bootstrap}", topic_prefix: "{topic_prefix}"}}'
    oncall = f"""alerts:
  destinations:
    - {{name: oncall, kind: webhook, url: "{rec.url}", secret_file: "{tmp_path / 'webhook.secret'}"}}
"""
    deliver_cfg = tmp_path / "deliver.yaml"
    deliver_cfg.write_text(f"data_dir: {tmp_path / 'deliver'}\n{kafka}\n{oncall}")
    # The self-test reads the sink's store (its query endpoint) and publishes to the same topics.
    # With chDB every process has its own store, so the deliverer's delivery records are not in the
    # sink's: the passing drill runs without destinations (delivery: skip; docs/operations.md).
    plain_cfg = tmp_path / "selftest.yaml"
    plain_cfg.write_text(f"data_dir: {sink_dir}\n{kafka}\n")
    paging_cfg = tmp_path / "selftest-paging.yaml"
    paging_cfg.write_text(f"data_dir: {sink_dir}\n{kafka}\n{oncall}")

    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix]
    sink = dataward_proc("sink", "clickhouse", *common, "--data-dir", str(sink_dir))
    worker = dataward_proc("worker", *common, "--data-dir", str(tmp_path / "worker"))
    agent = dataward_proc("agent", "file", "--watch", str(share), *common, "--data-dir", str(tmp_path / "agent"),
                          "--device", "fs-selftest")
    deliverer = dataward_proc("alerts", "deliver", "--config", str(deliver_cfg))
    for proc in (sink, worker, agent, deliverer):
        proc.wait_ready(120)

    ok = run_cli("selftest", str(share / "dataward-selftest"), "--config", str(plain_cfg), "--files", "60",
                 "--format", "json", timeout=180)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    result = json.loads(ok.stdout)
    stages = {s["name"]: s for s in result["stages"]}
    assert [stages[n]["status"] for n in ("agent", "detection", "delivery", "backup")] == ["pass", "pass", "skip",
                                                                                           "skip"]
    assert 0 < stages["agent"]["seconds"] <= stages["detection"]["seconds"] < 60
    assert list((share / "dataward-selftest").iterdir()) == [] and rec.requests == []  # a drill: nobody paged

    bad = run_cli("selftest", str(unwatched), "--config", str(paging_cfg), "--files", "30", "--timeout", "3",
                  "--format", "json", timeout=180)
    assert bad.returncode == 1, bad.stderr
    failed = json.loads(bad.stdout)
    uid = failed["failure_alert_uid"]
    assert not failed["passed"] and f"{kafka_topics.alerts}, stored by the sink" in bad.stderr

    def in_status():
        res = run_cli("status", "--data-dir", str(sink_dir), "--format", "json")
        found = [i for i in json.loads(res.stdout)["incidents"] if i["uid"] == uid] if res.returncode == 0 else []
        return found[0] if found else None

    incident = wait_for(in_status, 60, interval=1, what="the selftest_failed alert stored by the sink")
    assert (incident["rule"], incident["severity"], incident["drill"]) == ("selftest_failed", "high", False)
    wait_for(lambda: rec.requests, 30, what="the deliverer paging the failure")
    page = rec.requests[0].json()["data"]
    assert (page["uid"], page["rule"]) == (uid, "selftest_failed")
    for proc in (agent, worker, deliverer, sink):
        assert proc.stop() == 0
    assert len(rec.requests) == 1  # paged once: by the deliverer, not again by the self-test
