"""End to end on the embedded default: `dataward run` watching a directory, a ransomware-style
rename burst, the alert in the JSONL file and in ClickHouse, and every event in `events`."""
from __future__ import annotations

import json
import time

import pytest

from dataward.simulate import simulate_rename
from tests.procs import run_cli, wait_for

pytestmark = pytest.mark.e2e


def _query_json(data_dir, sql):
    res = run_cli("query", sql, "--data-dir", str(data_dir), "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _alerts(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fired(alert, rule):
    """The incident's alert counts ``rule`` among the rules that fired (its evidences)."""
    return any(e["kind"] == "rule" and e["name"] == rule for e in alert.get("evidences", []))


def test_embedded_mass_rename_alert_and_full_history(tmp_path, dataward_proc):
    watched, state, jsonl = tmp_path / "watched", tmp_path / "state", tmp_path / "alerts.jsonl"
    watched.mkdir()
    proc = dataward_proc("run", "--watch", str(watched), "--data-dir", str(state), "--alerts-jsonl", str(jsonl))
    proc.wait_ready(60)

    # A second `dataward run` on the same data dir: one line naming the holder, no traceback.
    second = run_cli("run", "--watch", str(watched), "--data-dir", str(state), timeout=60)
    assert second.returncode == 1
    assert second.stderr.strip() == (f"data dir {state} is in use by process {proc.proc.pid} "
                                     f"(lock file {state / 'dataward.lock'})")

    t_first_rename = time.time()
    simulate_rename(watched, 300, ".locked", show_progress=False)
    alert = wait_for(
        lambda: next((a for a in _alerts(jsonl) if _fired(a, "mass_rename")), None), 10, what="mass_rename alert"
    )
    latency = time.time() - t_first_rename
    print(f"embedded: first rename -> alert in JSONL {latency * 1000:.0f} ms")
    assert alert["severity"] in ("high", "critical")
    assert alert["user"] and alert["title"] and alert["paths"]
    assert alert["first_seen"] <= alert["detected_at"]
    # The escalation for the same burst arrives too: 300 renames are far past critical.
    wait_for(lambda: any(a["severity"] == "critical" and a["uid"] == alert["uid"] for a in _alerts(jsonl)), 10,
             what="critical escalation")

    # Queried while `dataward run` owns the chDB directory (served over loopback).
    renames = wait_for(
        lambda: _query_json(state, "SELECT count() AS n FROM events WHERE activity_name = 'Rename'")[0]["n"] == 300,
        15, interval=0.5, what="300 renames in events",
    )
    assert renames
    rows = _query_json(state, "SELECT rule, severity, file_count FROM alerts FINAL "
                              "WHERE arrayExists(e -> tupleElement(e, 'name') = 'mass_rename', evidences)")
    assert rows and rows[0]["severity"] == "critical" and rows[0]["rule"] == "mass_rename"

    assert proc.stop() == 0

    # With nothing running, query opens the store directly: everything was flushed on SIGINT.
    paths = _query_json(state, "SELECT file_new_path FROM events WHERE activity_name = 'Rename'")
    expected = {str(watched / "dataward-selftest" / f"sample-{i:05d}.csv.locked") for i in range(300)}
    assert {r["file_new_path"] for r in paths} == expected
    creates = _query_json(
        state, "SELECT uniqExact(file_path) AS n FROM events WHERE activity_name = 'Create' AND file_path LIKE '%.csv'"
    )
    assert creates[0]["n"] == 300


def test_run_refuses_a_missing_directory(tmp_path):
    res = run_cli("run", "--watch", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "s"))
    assert res.returncode == 2
    assert "not a directory" in res.stderr


def test_query_param_without_equals_is_a_clear_error(tmp_path):
    res = run_cli("query", "SELECT {user:String}", "--data-dir", str(tmp_path), "-p", "user")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--param needs name=value: user" in res.stderr and "-p user=alice" in res.stderr
