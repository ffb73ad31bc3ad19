"""Batch boundaries never change what an incident counts (the full default policy, pure).

The same 300-file attack is fed in batches cut at every place a worker or the embedded bus might
cut it, with the state round-tripped through its encoding between batches as the changelog does;
the incident's closing version must count all 300 files every time. A burst and the event that
shows it has gone quiet arriving in one batch (a backlog after downtime) must still page.
"""
from __future__ import annotations

import random
from itertools import pairwise

import pytest

from dwcore.detectors.engine import evaluate, tick
from dwcore.detectors.policy import Policy, load_policy
from dwcore.detectors.state import UserState, decode_state, encode_state
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent, Activity, make_event

T0 = 1_700_000_000_000
FILES = 300
HOUR = 3_600_000


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def attack() -> list[AccessEvent]:
    # As the worker-group test sends it: renames to .locked 5 ms apart.
    return [make_event(Activity.RENAME, uid=f"r{i}", time=T0 + i * 5, user_name="mallory", device="fs1",
                       share="/srv/data", file_path=f"/srv/data/mallory/f{i:04d}.csv",
                       file_new_path=f"/srv/data/mallory/f{i:04d}.csv.locked") for i in range(FILES)]


def later() -> AccessEvent:
    return make_event(Activity.CREATE, uid="later", time=T0 + HOUR, user_name="mallory", device="fs1",
                      share="/srv/data", file_path="/srv/data/mallory/notes.txt")


def feed(policy: Policy, batches: list[list[AccessEvent]]) -> tuple[UserState | None, list[Alert]]:
    state: UserState | None = None
    out: list[Alert] = []
    for batch in batches:
        if batch:
            state, alerts = evaluate(state, "mallory", batch, policy)
            state = decode_state(encode_state(state))  # as the table's changelog keeps it
            out.extend(alerts)
    return state, out


def cut(events: list[AccessEvent], cuts: list[int]) -> list[list[AccessEvent]]:
    edges = [0, *cuts, len(events)]
    return [events[a:b] for a, b in pairwise(edges)]


def closed_count(alerts: list[Alert]) -> int:
    closed = [a for a in alerts if a.status == "closed"]
    assert len(closed) == 1, [(a.version, a.status) for a in alerts]
    assert len({a.uid for a in alerts}) == 1
    assert [a.version for a in alerts] == list(range(1, len(alerts) + 1))
    assert alerts[0].status == "open" and alerts[0].severity in ("high", "critical")
    return closed[0].file_count


# Every cut through the thresholds' crossings (known_extension at 3, mass_rename at 25, growth
# versions at 2x), then every 25th to the end: ~45 splits keep the test to a few seconds.
SPLITS = sorted({*range(0, 31), 49, 50, 51, *range(75, FILES + 1, 25)})


def test_two_batches_cut_anywhere_count_every_file(policy: Policy) -> None:
    events = attack()
    wrong = {}
    for k in SPLITS:
        st, alerts = feed(policy, cut(events, [k]))
        _, closing = tick(st, "mallory", T0 + HOUR, policy)
        if closed_count(alerts + closing) != FILES:
            wrong[k] = closed_count(alerts + closing)
    assert wrong == {}


def test_one_event_per_batch_and_random_cuts_count_every_file(policy: Policy) -> None:
    events = attack()
    _, alerts = feed(policy, [[e] for e in events] + [[later()]])
    assert closed_count(alerts) == FILES
    rnd = random.Random(8)
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, FILES), rnd.randint(2, 20)))
        _, alerts = feed(policy, cut(events, cuts) + [[later()]])
        assert closed_count(alerts) == FILES, cuts


@pytest.mark.parametrize("k", [0, 1, 2, 3, 24, 25, 150, 299])
def test_burst_and_its_quiet_end_in_one_batch_still_page(policy: Policy, k: int) -> None:
    # The last batch holds the rest of the attack and an event an hour later: the incident opens
    # and closes within it. It used to close with version 0, so nothing was ever emitted.
    batches = cut(attack(), [k])
    batches[-1] = [*batches[-1], later()]
    _, alerts = feed(policy, batches)
    assert closed_count(alerts) == FILES
