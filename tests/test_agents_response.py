"""Local response hooks and the agent's fast path (detectors on its own events)."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from dwcore.agents.fastpath import FastPath
from dwcore.agents.response import Hook, ResponseHooks, render
from dwcore.detectors import engine
from dwcore.detectors.policy import load_policy
from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.event import Activity, make_event
from tests.test_agents_watcher import wait_for


def _alert(user: str = "mallory", severity: str = "critical", uid: str = "inc-1", **kw) -> Alert:
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


def _renames(tag: str, n: int, user: str = "mallory", t0: int = 1_800_000_000_000) -> list:
    return [make_event(Activity.RENAME, uid=f"{tag}{i}", time=t0 + i, user_name=user, device="fs1",
                       file_path=f"/s/{tag}{i}.docx", file_new_path=f"/s/{tag}{i}.docx.locked") for i in range(n)]


def test_fast_path_alerts_on_a_rename_burst_without_a_broker() -> None:
    got: list[Alert] = []
    fp = FastPath(load_policy(), [got.append], threaded=False)
    batch = _renames("u", 120)
    batch += [make_event(Activity.UPDATE, uid=f"b{i}", time=1_800_000_000_000 + i, user_name="bob", device="fs1",
                         file_path=f"/s/b{i}.txt") for i in range(50)]
    out = fp(batch)
    assert out == batch  # the fast path never changes or drops events
    assert {a.user for a in got} == {"mallory"} and "mass_rename" in {a.rule for a in got}
    first = {a.uid for a in got}
    # state is kept per user across batches: the next burst grows the same incident, not a new one
    fp(_renames("v", 5, t0=1_800_000_000_200))
    assert {a.uid for a in got} == first


def test_threaded_fast_path_returns_at_once_sheds_only_ordinary_events_and_never_canaries() -> None:
    got: list[Alert] = []
    release = threading.Event()

    def slow_evaluate(state, user, events, policy):  # the real engine, held back
        release.wait(10)
        return engine.evaluate(state, user, events, policy)

    fp = FastPath(load_policy(), [got.append], max_pending=100, evaluate=slow_evaluate)
    try:
        start = time.perf_counter()
        fp(_renames("a", 10, user="x"))  # taken by the thread, which now waits
        time.sleep(0.05)
        fp(_renames("b", 500, user="y"))  # 100 queued, 400 shed from the fast path only
        canary = make_event(Activity.READ, uid="c1", time=1_800_000_001_000, user_name="eve", device="fs1",
                            file_path="/s/Payroll_2026_Q3.xlsx", canary=True)
        assert fp([canary]) == [canary]
        assert time.perf_counter() - start < 0.5  # capture never waits for the detectors
        assert fp.counters["shed"] == 400
        release.set()
        assert fp.wait_idle(30)
    finally:
        release.set()
        fp.close()
    assert "canary_touch" in {a.rule for a in got if a.user == "eve"}
    assert fp.counters["events"] == 10 + 100 + 1


def test_a_touch_seen_early_is_counted_once_when_the_chain_brings_it_again() -> None:
    got: list[Alert] = []
    fp = FastPath(load_policy(), [got.append], threaded=False)
    t = 1_800_000_000_000
    read = make_event(Activity.READ, uid="r1", time=t, user_name="eve", device="fs1", file_path="/s/Payroll.xlsx",
                      canary=True)
    fp.early([read], True)
    write = make_event(Activity.UPDATE, uid="w-early", time=t + 1, user_name="eve", device="fs1",
                       file_path="/s/Payroll.xlsx", canary=True)
    fp.early([write], False)
    assert fp.counters["events"] == 2 and {a.rule for a in got} == {"canary_touch"}
    # the chain's copies: the published read itself and the file watcher's own Update of the write
    watcher_write = make_event(Activity.UPDATE, uid="w-watcher", time=t + 30, user_name="eve", device="fs1",
                               file_path="/s/Payroll.xlsx", canary=True)
    other = make_event(Activity.UPDATE, uid="o1", time=t + 31, user_name="eve", device="fs1", file_path="/s/a.txt")
    assert fp([read, watcher_write, other]) == [read, watcher_write, other]
    assert fp.counters["events"] == 3  # only the unrelated update was new
    later = make_event(Activity.UPDATE, uid="w2", time=t + 2000, user_name="eve", device="fs1",
                       file_path="/s/Payroll.xlsx", canary=True)
    fp([later])  # a later write of the canary is a new touch
    assert fp.counters["events"] == 4
