"""Local response hooks and the agent's fast path (detectors on its own events)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from dwcore.agents.fastpath import FastPath
from dwcore.agents.response import Hook, ResponseHooks, render
from dwcore.detectors.policy import load_policy
from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.event import Activity, make_event
from tests.test_agents_watcher import wait_for


def _alert(user: str = "mallory", severity: str = "critical", uid: str = "inc-1", **kw) -> Alert:  # noqa: ANN003
    sev = Severity(severity)
    return Alert(uid=uid, title="t", rule="mass_rename", rule_uid="r", severity=sev, severity_id=sev.ocsf_id,
                 user=user, first_seen=1, detected_at=2, signal="renames", observed=100, threshold=25,
                 window_s=10, file_count=100, paths=["/s/a"], devices=["fs1"], shares=["/s"], **kw)


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


WRITE = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"]


def test_hook_runs_the_command_once_per_incident_with_placeholders(tmp_path: Path) -> None:
    marker, audit = tmp_path / "locked.txt", tmp_path / "responses.jsonl"
    hooks = ResponseHooks([Hook("high", [*WRITE, str(marker), "{user}:{rule}:{severity}"], "lockout")], audit,
                          dry_run=False)
    try:
        hooks.on_alert(_alert())
        hooks.on_alert(_alert())  # the same incident again (a new version): not a second lockout
        hooks.on_alert(_alert(severity="medium", uid="inc-2"))  # below the hook's severity
        wait_for(lambda: _records(audit), what="audit record")
    finally:
        hooks.close()
    assert marker.read_text() == "mallory:mass_rename:critical\n"
    recs = _records(audit)
    assert len(recs) == 1
    assert recs[0]["outcome"] == "ran" and recs[0]["returncode"] == 0 and recs[0]["hook"] == "lockout"
    assert recs[0]["command"][-1] == "mallory:mass_rename:critical"


def test_dry_run_records_without_running(tmp_path: Path) -> None:
    marker, audit = tmp_path / "m", tmp_path / "r.jsonl"
    hooks = ResponseHooks([Hook("low", [*WRITE, str(marker), "{user}"])], audit, dry_run=True)
    hooks.on_alert(_alert())
    hooks.close()
    assert not marker.exists()
    assert [r["outcome"] for r in _records(audit)] == ["dry_run"]


def test_allow_listed_users_are_never_acted_on(tmp_path: Path) -> None:
    marker, audit = tmp_path / "m", tmp_path / "r.jsonl"
    hooks = ResponseHooks([Hook("low", [*WRITE, str(marker), "{user}"])], audit, dry_run=False,
                          allow_users=["backup"])
    hooks.on_alert(_alert(user="backup"))
    hooks.close()
    assert not marker.exists()
    assert [r["outcome"] for r in _records(audit)] == ["skipped_allow_listed"]


@pytest.mark.parametrize("user", ["--help", "-rf"])
def test_a_hostile_user_name_never_becomes_an_option(tmp_path: Path, user: str) -> None:
    assert render(["lock", "{user}"], _alert(user=user)) is None
    audit = tmp_path / "r.jsonl"
    hooks = ResponseHooks([Hook("low", ["true", "{user}"])], audit, dry_run=False)
    hooks.on_alert(_alert(user=user))
    hooks.close()
    assert [r["outcome"] for r in _records(audit)] == ["refused_unsafe_value"]


def test_shell_metacharacters_stay_one_argument(tmp_path: Path) -> None:
    marker, audit = tmp_path / "m", tmp_path / "r.jsonl"
    hooks = ResponseHooks([Hook("low", [*WRITE, str(marker), "{user}"])], audit, dry_run=False)
    hooks.on_alert(_alert(user="x; touch /tmp/pwned $(id)"))
    hooks.close()
    assert marker.read_text() == "x; touch /tmp/pwned $(id)\n"


def test_timeouts_and_failures_are_recorded(tmp_path: Path) -> None:
    audit = tmp_path / "r.jsonl"
    hooks = ResponseHooks([Hook("low", [sys.executable, "-c", "import time; time.sleep(5)"], "slow"),
                           Hook("low", [sys.executable, "-c", "raise SystemExit(3)"], "bad"),
                           Hook("low", [str(tmp_path / "missing-binary")], "missing")],
                          audit, dry_run=False, timeout_s=0.5)
    start = time.monotonic()
    hooks.on_alert(_alert())
    hooks.close()
    assert time.monotonic() - start < 4
    outcomes = {r["hook"]: (r["outcome"], r.get("returncode")) for r in _records(audit)}
    assert outcomes == {"slow": ("timeout", None), "bad": ("failed", 3), "missing": ("error", None)}


def test_drills_and_closed_incidents_trigger_nothing(tmp_path: Path) -> None:
    audit = tmp_path / "r.jsonl"
    hooks = ResponseHooks([Hook("low", ["true"])], audit, dry_run=False)
    hooks.on_alert(_alert(drill=True))
    hooks.on_alert(_alert(uid="x", status="closed"))
    hooks.close()
    assert _records(audit) == []


def test_fast_path_alerts_on_a_rename_burst_without_a_broker() -> None:
    got: list[Alert] = []
    fp = FastPath(load_policy(), [got.append])
    t0 = 1_800_000_000_000
    batch = [make_event(Activity.RENAME, uid=f"u{i}", time=t0 + i, user_name="mallory", device="fs1",
                        file_path=f"/s/f{i}.docx", file_new_path=f"/s/f{i}.docx.locked") for i in range(120)]
    batch += [make_event(Activity.UPDATE, uid=f"b{i}", time=t0 + i, user_name="bob", device="fs1",
                         file_path=f"/s/b{i}.txt") for i in range(50)]
    start = time.perf_counter()
    out = fp(batch)
    took = time.perf_counter() - start
    assert out == batch  # the fast path never changes or drops events
    assert [a.user for a in got] == ["mallory"] and got[0].rule == "mass_rename"
    assert got[0].file_count == 120
    assert took < 0.1
    # state is kept per user across batches: the next burst escalates the same incident, not a new one
    more = [make_event(Activity.RENAME, uid=f"v{i}", time=t0 + 200 + i, user_name="mallory", device="fs1",
                       file_path=f"/s/g{i}.docx", file_new_path=f"/s/g{i}.docx.locked") for i in range(5)]
    fp(more)
    assert {a.uid for a in got} == {got[0].uid}
