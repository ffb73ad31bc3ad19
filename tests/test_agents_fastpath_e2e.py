"""The agent alerts by itself: detectors run on its own events before any broker round trip."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from dataward.config import load_config
from dataward.distributed import run_file_agent
from dwcore.schemas.codec import decode_alert
from tests.test_agents_kafka import consume
from tests.test_agents_watcher import wait_for

pytestmark = pytest.mark.kafka


def _alerts(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_rename_burst_alerts_from_the_agent_runs_the_hook_and_reaches_kafka(kafka_bootstrap, topic_prefix, tmp_path):
    share, data = tmp_path / "share", tmp_path / "data"
    share.mkdir()
    for i in range(40):
        (share / f"f{i}.docx").write_text("x")
    marker = tmp_path / "hook.txt"
    config = load_config(overrides={
        "data_dir": str(data),
        "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix},
        "agent": {"device": "fs01"},
        "response": {"dry_run": False, "hooks": [{"min_severity": "high", "name": "snapshot",
                                                   "command": ["sh", "-c", 'echo "$1" >> "$2"', "hook",
                                                               "{user} {rule}", str(marker)]}]},
    }, env={})
    stop, ready = threading.Event(), threading.Event()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        run_file_agent(config, [str(share)], stop, ready.set, tune_inotify=False)))
    t.start()
    try:
        assert ready.wait(30)
        for i in range(40):
            (share / f"f{i}.docx").rename(share / f"f{i}.docx.locked")
        done = time.monotonic()
        wait_for(lambda: _alerts(data / "agent-alerts.jsonl"), timeout=5, what="agent alert")
        latency = time.monotonic() - done
        wait_for(marker.exists, timeout=10, what="hook ran")
    finally:
        stop.set()
        t.join(60)
    alerts = _alerts(data / "agent-alerts.jsonl")
    assert alerts[0]["user"] == "root" and alerts[0]["severity"] in ("high", "critical")
    assert alerts[0]["rule"] in ("mass_rename", "known_extension") and alerts[0]["file_count"] >= 10
    assert latency < 1.0, latency
    assert marker.read_text().startswith(f"root {alerts[0]['rule']}")
    audit = [json.loads(x) for x in (data / "responses.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in audit] == ["ran"]
    got = [decode_alert(m.value()) for m in consume(kafka_bootstrap, f"{topic_prefix}dw.alerts", 1)]
    assert got and got[0].uid == alerts[0]["uid"]
    assert result["fastpath_alerts"] >= 1


def _first_alert_after(path: Path, action, timeout: float = 5.0) -> tuple[dict, float]:
    """Runs ``action`` and polls the agent's alert file every 0.5 ms; returns the alert and seconds taken."""
    before = len(_alerts(path))
    start = time.perf_counter()
    action()
    while time.perf_counter() - start < timeout:
        got = _alerts(path)
        if len(got) > before:
            return got[before], time.perf_counter() - start
        time.sleep(0.0005)
    raise AssertionError("no alert from the agent")


def test_canary_touch_alerts_from_the_agent_within_100_ms(kafka_bootstrap, topic_prefix, tmp_path):
    from dwcore.agents import canary

    share, data = tmp_path / "share", tmp_path / "data"
    share.mkdir()
    planted = {c.kind: c for c in canary.plant([str(share)], data, ["xlsx", "docx"])}
    config = load_config(overrides={
        "data_dir": str(data), "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix},
        "agent": {"device": "fs01"}, "canary": {"grace_ms": 0}}, env={})
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: run_file_agent(config, [str(share)], stop, ready.set, tune_inotify=False))
    t.start()
    alerts_file = data / "agent-alerts.jsonl"
    try:
        assert ready.wait(30)

        def read_canary() -> None:
            with open(planted["xlsx"].path, "rb") as f:
                f.read(4096)

        read_alert, read_s = _first_alert_after(alerts_file, read_canary)

        def encrypt_canary() -> None:
            with open(planted["docx"].path, "r+b") as f:
                f.write(os.urandom(2048))

        write_alert, write_s = _first_alert_after(alerts_file, encrypt_canary)
    finally:
        stop.set()
        t.join(60)
    assert read_alert["rule"] == "canary_touch" and read_alert["severity"] == "critical"
    assert planted["xlsx"].path in read_alert["paths"]
    assert read_s < 0.1, f"canary read -> agent alert took {read_s * 1000:.1f} ms"
    # a write goes from the canary's own watch straight to the fast path, not through the watcher's batches
    assert planted["docx"].path in write_alert["paths"]
    assert write_s < 0.1, f"canary write -> agent alert took {write_s * 1000:.1f} ms"
    print(f"canary read -> alert {read_s * 1000:.1f} ms; canary write -> alert {write_s * 1000:.1f} ms")
