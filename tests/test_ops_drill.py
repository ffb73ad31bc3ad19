"""`dataward simulate` as a drill against a running `dataward run` (what `make run` starts): detected,
tagged as a drill so nobody is paged, a second run in the cooldown detected on its own, nothing left
behind, and a failure (exit 1, plain message) when no alert comes; also on SIGTERM nothing is left."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from dwcore.sinks.signing import new_secret
from tests.procs import run_cli, wait_for

pytestmark = pytest.mark.e2e


def _drill(watched, state, *extra: str, timeout: float = 120):
    return run_cli("simulate", "rename", str(watched), "--data-dir", str(state), "--files", "60", *extra,
                   timeout=timeout)


def test_drill_detected_twice_never_paged_nothing_left(tmp_path, dataward_proc, receiver):
    watched, state, elsewhere = tmp_path / "share", tmp_path / "state", tmp_path / "unwatched"
    watched.mkdir()
    elsewhere.mkdir()
    (watched / "keep.txt").write_text("a user's file")
    rec = receiver()
    (tmp_path / "webhook.secret").write_text(new_secret() + "\n")
    cfg = tmp_path / "dataward.yaml"
    jsonl = state / "alerts.jsonl"
    cfg.write_text(f"""
data_dir: {state}
alerts_jsonl: {jsonl}
alerts:
  destinations:
    - name: oncall
      kind: webhook
      url: {rec.url}
      secret_file: {tmp_path / 'webhook.secret'}
""")
    run = dataward_proc("run", "--watch", str(watched), "--config", str(cfg))
    run.wait_ready(60)

    first = _drill(watched, state)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"^drill detected: critical (mass_rename|known_extension) alert ", first.stdout, re.M)
    # Immediately again, well inside the first incident's cooldown: detected on its own.
    second = _drill(watched, state)
    assert second.returncode == 0, second.stdout + second.stderr
    uid = re.compile(r"alert ([0-9a-f-]{36})")
    assert uid.search(first.stdout).group(1) != uid.search(second.stdout).group(1)
    assert sorted(p.name for p in watched.iterdir()) == ["keep.txt"]  # nothing left behind

    alerts = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len({a["uid"] for a in alerts}) == 2 and all(a["drill"] for a in alerts)
    assert "DRILL   CRITICAL " in run.stderr()  # shown on the console, marked

    def deliveries():
        res = run_cli("query", "SELECT DISTINCT alert_uid, status FROM deliveries", "--data-dir", str(state),
                      "--format", "json")
        rows = json.loads(res.stdout) if res.returncode == 0 else []
        return rows if len({r["alert_uid"] for r in rows}) == 2 else None

    rows = wait_for(deliveries, 15, what="both drills in the deliveries table")
    assert {r["status"] for r in rows} == {"skipped_drill"}
    assert rec.requests == []  # nobody paged

    # A directory nobody watches: no alert, exit 1 with one plain line, and still nothing left.
    t0 = time.monotonic()
    missed = _drill(elsewhere, state, "--timeout", "3")
    assert missed.returncode == 1
    assert "FAILED: no drill alert within 3 s" in missed.stderr and "is the directory watched?" in missed.stderr
    assert time.monotonic() - t0 < 60 and list(elsewhere.iterdir()) == []

    # Interrupted while waiting (SIGTERM, as systemd stops a unit): the directory is removed.
    proc = subprocess.Popen([sys.executable, "-m", "dataward.cli", "simulate", "rename", str(elsewhere),
                             "--data-dir", str(state), "--files", "5", "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(elsewhere.glob(".dataward-drill-*/*.locked")), 60, what="the drill's files")
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode != 0 and list(elsewhere.iterdir()) == []


def test_drill_without_a_running_pipeline_refuses_and_writes_nothing(tmp_path):
    watched = tmp_path / "share"
    watched.mkdir()
    res = run_cli("simulate", "rename", str(watched), "--data-dir", str(tmp_path / "nothing-runs"))
    assert res.returncode == 2
    assert "cannot run a drill: nothing serves the store" in res.stderr
    assert list(watched.iterdir()) == []


def test_stale_drill_directories_are_swept_prepared_ones_kept(tmp_path):
    import os

    from dataward.simulate import STALE_DRILL_S, sweep_stale
    from dwcore.detectors.drill import drill_dir_name

    stale, prepared, fresh, user = (tmp_path / drill_dir_name(f"{i:016x}") for i in range(4))
    for d in (stale, prepared, fresh):
        d.mkdir()
    (prepared / "victim-00000.bin").write_bytes(b"x")
    user.with_name(".dataward-drill-mine").mkdir()  # not a drill name: never touched
    old = time.time() - STALE_DRILL_S - 60
    for d in (stale, prepared):
        os.utime(d, (old, old))
    assert sweep_stale(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [prepared.name, fresh.name, ".dataward-drill-mine"])
