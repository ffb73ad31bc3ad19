"""The agent alerts by itself: detectors run on its own events before any broker round trip."""
from __future__ import annotations

import json
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
    assert alerts[0]["rule"] == "mass_rename" and alerts[0]["user"] == "root"
    assert latency < 1.0, latency
    assert marker.read_text().startswith("root mass_rename")
    audit = [json.loads(x) for x in (data / "responses.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in audit] == ["ran"]
    got = [decode_alert(m.value()) for m in consume(kafka_bootstrap, f"{topic_prefix}dw.alerts", 1)]
    assert got and got[0].uid == alerts[0]["uid"]
    assert result["fastpath_alerts"] >= 1
