"""Drills: detected like an attack, tagged so nobody is paged, never a cover for a real one."""
from __future__ import annotations

import itertools

import pytest

from dwcore.detectors.drill import drill_dir_name, event_drill, path_drill
from dwcore.detectors.engine import evaluate
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import Activity, make_event
from tests.test_detectors_engine import T0, skeleton_policy

_ids = itertools.count()
RUN_A, RUN_B = "0123456789abcdef", "fedcba9876543210"


def _rename(ms: int, old: str, new: str):
    n = next(_ids)
    return make_event(Activity.RENAME, uid=f"d{n}", time=T0 + ms, user_name="alice", device="fs01",
                      file_path=old, file_new_path=new)


def drill_renames(run: str, n: int, start_ms: int = 0) -> list:
    base = f"/srv/data/{drill_dir_name(run)}"
    return [_rename(start_ms + i * 10, f"{base}/s{i}.csv", f"{base}/s{i}.csv.locked") for i in range(n)]


def _alerts(batches) -> list[Alert]:
    policy, state, out = skeleton_policy(), None, []
    for batch in batches:
        state, alerts = evaluate(state, "alice", batch, policy)
        out.extend(alerts)
    return out


def test_path_recognition_needs_the_exact_component():
    assert path_drill(f"/srv/{drill_dir_name(RUN_A)}/x.csv") == RUN_A
    assert path_drill(f"/srv/{drill_dir_name(RUN_A)}/deep/er/x.csv") == RUN_A
    for path in (f"/srv/{drill_dir_name(RUN_A)}",  # the directory itself, not a file in it
                 f"/srv/x{drill_dir_name(RUN_A)}/x.csv", f"/srv/{drill_dir_name(RUN_A)}0/x.csv",
                 "/srv/.dataward-drill-XYZ/x.csv", "/srv/.dataward-drill-0123/x.csv"):
        assert path_drill(path) is None, path
    with pytest.raises(ValueError):
        drill_dir_name("../../etc")


def test_moving_real_files_into_a_drill_directory_is_not_a_drill():
    inside = f"/srv/data/{drill_dir_name(RUN_A)}"
    assert event_drill(_rename(0, "/srv/data/payroll.xlsx", f"{inside}/payroll.xlsx.locked")) is None
    assert event_drill(_rename(0, f"{inside}/a.csv", f"/srv/data/{drill_dir_name(RUN_B)}/a.csv")) is None
    assert event_drill(_rename(0, f"{inside}/a.csv", f"{inside}/a.csv.locked")) == RUN_A
    real = [_rename(i * 10, f"/srv/data/r{i}.docx", f"{inside}/r{i}.docx.locked") for i in range(40)]
    alerts = _alerts([real])
    assert alerts and not any(a.drill for a in alerts)  # pages as usual


def test_drill_alerts_are_tagged_and_a_second_run_in_the_cooldown_is_detected_apart():
    first = _alerts([drill_renames(RUN_A, 40)])
    assert first and all(a.drill for a in first)
    # A second drill one second later, well inside the first incident's cooldown, still opens an
    # incident (and alert uid) of its own; a real burst at the same time is its own, live incident.
    real = [_rename(1_000 + i * 10, f"/srv/data/r{i}.docx", f"/srv/data/r{i}.docx.locked") for i in range(40)]
    both = _alerts([drill_renames(RUN_A, 40), drill_renames(RUN_B, 40, start_ms=1_000) + real])
    uids = {a.uid: a.drill for a in both}
    assert len(uids) == 3 and sorted(uids.values()) == [False, True, True]
    second = [a for a in both if a.drill and RUN_B in a.paths[0]]
    assert second and second[0].uid != first[0].uid and second[0].file_count == 40
