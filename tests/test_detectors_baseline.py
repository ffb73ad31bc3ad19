"""The online learned baseline: quiet on ordinary users' uneven minutes, loud on a real outlier."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from dwcore.detectors.baseline import ALPHA, MODEL_FEATURES, Ewma
from dwcore.detectors.engine import evaluate
from dwcore.detectors.policy import Policy, load_policy
from dwcore.detectors.state import decode_state, encode_state
from dwcore.schemas.event import AccessEvent, Activity, make_event

T0 = 1_767_225_600_000
_ids = itertools.count()
KIB = MODEL_FEATURES.index("kib_written")


def ev(act: Activity, ms: int, user: str = "olga", **kw: object) -> AccessEvent:
    n = next(_ids)
    return make_event(act, uid=f"b{n}", time=T0 + ms, user_name=user, device="fs0",
                      file_path=f"/srv/home/{user}/p{n % 13}/doc-{n}.docx", **kw)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def test_ordinary_users_uneven_minutes_raise_nothing(policy: Policy) -> None:
    # The pattern that paged dozens of users a day: ordinary work at random moments (a user acting
    # every ~7 s and one every ~minute), 45% of it saves of up to 64 KiB. A minute with three
    # saves where there is usually one was "5 standard deviations" out.
    acts = (Activity.CREATE,) * 35 + (Activity.UPDATE,) * 45 + (Activity.RENAME,) * 10 + (Activity.DELETE,) * 10
    rng = random.Random(3)

    def work(user: str, every_s: float) -> list[AccessEvent]:
        out, t = [], 0.0
        while t < 8 * 3600:
            t += rng.expovariate(1 / every_s)
            act = acts[rng.randrange(100)]
            out.append(ev(act, int(t * 1000), user, bytes_written=rng.randrange(1, 1 << 16) if act == Activity.UPDATE
                          else None, file_new_path=f"/srv/home/{user}/x.docx.old" if act == Activity.RENAME else None))
        return out

    idle, busy = work("idle", 57.0), work("busy", 7.0)
    for user, events in (("idle", idle), ("busy", busy)):
        events.sort(key=lambda e: e.time)
        state, alerts = None, []
        for i in range(0, len(events), 50):
            state, out = evaluate(state, user, events[i : i + 50], policy)
            alerts += out
        assert alerts == [], (user, [(a.rule, a.description) for a in alerts])


def test_a_minute_far_above_the_users_habit_is_still_an_anomaly(policy: Policy) -> None:
    # Two hours of ~100 KiB a minute, then a minute rewriting 600 MiB: anomalous (medium, not a page).
    events = [ev(Activity.UPDATE, m * 60_000 + i * 10_000, bytes_written=25_000) for m in range(120) for i in range(4)]
    events += [ev(Activity.UPDATE, 120 * 60_000 + i * 3_000, bytes_written=30 << 20) for i in range(20)]
    events += [ev(Activity.READ, 122 * 60_000)]
    _, alerts = evaluate(None, "olga", events, policy)
    (a,) = alerts
    assert a.rule == "behaviour_anomaly" and a.severity.value == "medium"
    (an,) = a.anomaly_analyses
    assert an.feature == "kib_written" and an.observed == 20 * 30 * 1024 and 90 <= an.baseline <= 110


def test_idle_minutes_fold_in_closed_form_like_one_by_one() -> None:
    rng = random.Random(5)
    for _ in range(50):
        vec = [math.log1p(rng.randrange(0, 5000)) for _ in MODEL_FEATURES]
        a, b = Ewma(space=1), Ewma(space=1)
        for e in (a, b):
            e._fold(vec)
            e._fold([math.log1p(rng.randrange(0, 50)) for _ in MODEL_FEATURES])
        b.mean, b.var = list(a.mean), list(a.var)
        k = rng.randrange(1, 61)
        for _ in range(k):
            a._fold([0.0] * len(MODEL_FEATURES))
        b._fold_idle(k)
        assert a.n == b.n
        assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-12)
        assert a.var == pytest.approx(b.var, rel=1e-9, abs=1e-12)
    assert ALPHA < 1


def test_a_baseline_kept_over_raw_counts_is_relearned_not_misread(policy: Policy) -> None:
    # A state from before the log scale (space 0) holds raw means like 120 KiB: read as log1p it
    # would hide everything for hours. It restarts learning instead; the rest of the state stays.
    saves = [ev(Activity.UPDATE, i * 60_000, bytes_written=100_000) for i in range(40)]
    state, _ = evaluate(None, "olga", saves, policy)
    state.baseline.space, state.baseline.mean = 0, [120.0] * len(MODEL_FEATURES)
    old = decode_state(encode_state(state))
    new, _ = evaluate(old, "olga", [ev(Activity.UPDATE, 41 * 60_000, bytes_written=1000)], policy)
    assert new.baseline.space == 1 and new.baseline.n <= 2 and max(new.baseline.mean) < 10
    assert new.horizons.snapshot(3, T0 + 41 * 60_000, ("events",)) == {"events": 41}
