"""`dataward selftest` on a running `dataward run`: passes with per-stage timings through agent,
detection and delivery (a drill: nobody paged), and fails when a stage is broken (a directory
nobody watches: no events, no detection), then raises a real alert to the configured webhook; each
result is a line of <data-dir>/selftest.jsonl. The backup stage's dry run against the halt policy."""
from __future__ import annotations

import json

import msgspec
import pytest

from dataward.config import load_config
from dataward.selftest import backup_dry_run
from dwcore.schemas.alert import Alert, Severity
from dwcore.sinks.signing import new_secret
from tests.procs import run_cli, wait_for


def test_selftest_passes_then_fails_and_alerts(tmp_path, dataward_proc, receiver):
    share, state, unwatched = tmp_path / "share", tmp_path / "state", tmp_path / "unwatched"
    (share / "dataward-selftest").mkdir(parents=True)
    unwatched.mkdir()
    rec = receiver()
    (tmp_path / "webhook.secret").write_text(new_secret() + "\n")
    cfg = tmp_path / "dataward.yaml"
    cfg.write_text(f"""
data_dir: {state}
alerts:
  destinations:
    - name: oncall
      kind: webhook
      url: {rec.url}
      secret_file: {tmp_path / 'webhook.secret'}
""")
    run = dataward_proc("run", "--watch", str(share), "--config", str(cfg))
    run.wait_ready(60)

    ok = run_cli("selftest", str(share / "dataward-selftest"), "--config", str(cfg), "--files", "60",
                 "--format", "json", timeout=180)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    result = json.loads(ok.stdout)
    stages = {s["name"]: s for s in result["stages"]}
    assert result["passed"] is True and list(stages) == ["agent", "detection", "delivery", "backup"]
    assert [stages[n]["status"] for n in stages] == ["pass", "pass", "pass", "skip"]
    assert 0 < stages["agent"]["seconds"] <= stages["detection"]["seconds"] <= stages["delivery"]["seconds"] < 60
    assert "oncall" in stages["delivery"]["detail"] and "no backup configured" in stages["backup"]["detail"]
    assert list((share / "dataward-selftest").iterdir()) == [] and rec.requests == []  # a drill: nobody paged

    # Broken: the self-test's directory is not watched, so nothing reaches detection.
    bad = run_cli("selftest", str(unwatched), "--config", str(cfg), "--files", "60", "--timeout", "3", timeout=180)
    assert bad.returncode == 1
    assert "self-test FAILED: alert" in bad.stderr and "FAILED" in bad.stdout
    assert "agent" in bad.stdout and "FAIL" in bad.stdout and list(unwatched.iterdir()) == []
    wait_for(lambda: rec.requests, 20, what="the selftest_failed alert at the webhook")
    alert = rec.requests[0].json()["data"]
    assert (alert["rule"], alert["severity"], alert["drill"]) == ("selftest_failed", "high", False)
    assert "agent: no drill event stored within 3 s" in alert["description"]

    lines = [json.loads(line) for line in (state / "selftest.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in lines] == [True, False]
    assert lines[1]["failure_alert_uid"] == alert["uid"] and lines[0]["alert_uid"] == result["alert_uid"]
    assert "for the store: the inbox of the run" in bad.stderr

    # The running `dataward run` stores the failure from its inbox: an open incident in status.
    def failure_in_status():
        res = run_cli("status", "--config", str(cfg), "--format", "json")
        found = [i for i in json.loads(res.stdout)["incidents"] if i["uid"] == alert["uid"]] if res.stdout else []
        return found[0] if found else None

    incident = wait_for(failure_in_status, 30, interval=0.5, what="the selftest_failed alert in dataward status")
    assert (incident["rule"], incident["severity"], incident["drill"]) == ("selftest_failed", "high", False)
    assert list((state / "alert-inbox").iterdir()) == []  # taken in once stored
    assert len(rec.requests) == 1  # paged once, by the self-test itself


def _drill_alert(severity: Severity, user: str = "dataward", path: str = "/srv/share/x/a.locked") -> Alert:
    return Alert(uid="u", title="t", rule="mass_rename", rule_uid="r", severity=severity,
                 severity_id=severity.ocsf_id, user=user, first_seen=1, detected_at=2, signal="renames", observed=60,
                 threshold=25, window_s=10, file_count=60, paths=[path], drill=True)


@pytest.mark.parametrize(("backup", "severity", "expected"), [
    ({}, Severity.CRITICAL, "skip"),
    ({"bucket": "b"}, Severity.CRITICAL, "pass"),
    ({"bucket": "b", "halt_on_drill": False}, Severity.CRITICAL, "pass"),  # dry run: as if it were real
    ({"bucket": "b", "halt_severity": "critical"}, Severity.HIGH, "fail"),
    ({"bucket": "b", "protect_users": ["alice"]}, Severity.CRITICAL, "fail"),
    ({"pause_command": "/bin/true", "protect_paths": ["/srv/share"]}, Severity.HIGH, "pass"),
    ({"bucket": "b", "protect_paths": ["/srv/other"]}, Severity.CRITICAL, "fail"),
])
def test_backup_stage_is_a_dry_run_of_the_halt_policy(backup, severity, expected):
    cfg = load_config(None, {"backup": backup}, env={})
    stage = backup_dry_run(cfg, _drill_alert(severity))
    assert stage.status == expected, stage.detail


def test_selftest_with_the_pipeline_down_fails_and_alerts(tmp_path, dataward_proc):
    """The run is down: the failure goes to the alerts JSONL at once, and into the store when the
    run starts again (it takes its inbox in)."""
    share, state = tmp_path / "share", tmp_path / "state"
    share.mkdir()
    jsonl = tmp_path / "alerts.jsonl"
    res = run_cli("selftest", str(share), "--data-dir", str(state), "--format", "json", "--mode", "embedded",
                  env={"DATAWARD_ALERTS_JSONL": str(jsonl)})
    assert res.returncode == 1, res.stderr
    result = json.loads(res.stdout)
    assert not result["passed"] and "the store does not answer" in result["stages"][0]["detail"]
    (alert,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert alert["rule"] == "selftest_failed" and not alert["drill"] and alert["uid"] == result["failure_alert_uid"]
    assert list(share.iterdir()) == []  # nothing was written
    assert [p.name for p in (state / "alert-inbox").iterdir()] == [f"{alert['uid']}-v1.json"]

    run = dataward_proc("run", "--watch", str(share), "--data-dir", str(state))
    run.wait_ready(90)

    def stored():
        q = run_cli("query", "SELECT uid, rule, drill FROM alerts", "--data-dir", str(state), "--format", "json")
        return json.loads(q.stdout) if q.returncode == 0 and q.stdout.strip() not in ("", "[]") else None

    rows = wait_for(stored, 30, interval=0.5, what="the failure stored by the restarted run")
    assert rows == [{"uid": alert["uid"], "rule": "selftest_failed", "drill": False}]
    assert list((state / "alert-inbox").iterdir()) == []
    assert run.stop() == 0


def test_alert_inbox_refuses_what_is_not_an_alert(tmp_path):
    """The inbox is read as untrusted: a file that is not an alert, or too large, is set aside as
    *.bad; a good one is stored and removed; a store that fails keeps it for the next poll."""
    from dataward.alert_inbox import MAX_FILE_BYTES, drop, inbox_dir, ingest
    from dataward.selftest import SelftestResult, Stage, failure_alert
    from dwcore.sinks.errors import StoreUnavailable

    result = SelftestResult(run_id="r1", started_at=1, directory="/srv/x\x1b[2J", device="fs", passed=False,
                            stages=[Stage("agent", "fail", None, "no drill event")])
    good = failure_alert(result, 2)
    drop(tmp_path, good)
    box = inbox_dir(tmp_path)
    (box / "evil.json").write_bytes(b'{"uid": "x", "rule": "\\u001b[2J"}')
    (box / "huge.json").write_bytes(b" " * (MAX_FILE_BYTES + 1))

    def down(alerts):
        raise StoreUnavailable("store down")

    with pytest.raises(StoreUnavailable):
        ingest(box, down)
    assert (box / f"{good.uid}-v1.json").exists()  # kept: not stored yet
    stored: list = []
    assert ingest(box, stored.extend) == 1
    assert [a.uid for a in stored] == [good.uid] and stored[0].tags == ["dataward.selftest"]
    assert sorted(p.name for p in box.iterdir()) == ["evil.json.bad", "huge.json.bad"]


def test_a_failed_selftest_never_halts_a_backup():
    from dataward.selftest import SelftestResult, Stage, failure_alert
    from dwcore.sinks.backup_controller import HaltPolicy, should_halt

    result = SelftestResult(run_id="r2", started_at=1, directory="/srv/share", device="fs", passed=False,
                            stages=[Stage("agent", "fail", None, "x")])
    alert = failure_alert(result, 2)
    assert alert.severity == "high" and not should_halt(alert, HaltPolicy(min_severity="low"))
    assert should_halt(msgspec.structs.replace(alert, tags=[]), HaltPolicy(min_severity="low"))  # only the tag
