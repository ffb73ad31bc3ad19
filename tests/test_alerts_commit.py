"""Alerts are made durable before the detector state moves on; a failure there loses nothing."""
from __future__ import annotations

import pytest

from dwcore.detectors.policy import load_policy
from dwcore.schemas import Activity
from dwcore.schemas.event import make_event
from dwcore.sinks.alert_router import AlertRouter
from dwcore.sinks.alert_routing import Destination
from dwcore.stream.processing import detect


def _renames(user: str, n: int, t0: int = 1_700_000_000_000):
    return [make_event(Activity.RENAME, uid=f"{user}-{i}", time=t0 + i * 10, user_name=user, device="fs1",
                       file_path=f"/d/{user}/{i}.csv", file_new_path=f"/d/{user}/{i}.csv.locked")
            for i in range(n)]


def test_state_does_not_move_on_when_the_alert_cannot_be_made_durable():
    policy = load_policy()
    state: dict[str, bytes] = {}

    def full_disk(alerts):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        detect(state, _renames("alice", 300), policy, before_commit=full_disk)
    assert "alice" not in state  # not "already alerted": the next try raises the alert again
    seen = []
    alerts = detect(state, _renames("alice", 300), policy, before_commit=seen.extend)
    assert alerts and seen == alerts and "alice" in state


def test_one_users_failure_keeps_the_alerts_already_committed(tmp_path):
    """Two users cross in one batch; the outbox takes alice's alerts and then fails for bob's:
    alice's are durable and her state moved on, bob's state did not (his alerts come again)."""
    router = AlertRouter(tmp_path / "outbox", [Destination(name="d", kind="webhook", url="http://127.0.0.1:9/")])
    policy = load_policy()
    state: dict[str, bytes] = {}
    committed = []

    def commit(alerts):
        if alerts[0].user == "bob":
            raise OSError(28, "No space left on device")
        router.commit(alerts)
        committed.extend(alerts)

    with pytest.raises(OSError):
        detect(state, _renames("alice", 300) + _renames("bob", 300), policy, before_commit=commit)
    assert committed and {a.user for a in committed} == {"alice"}
    assert "alice" in state and "bob" not in state
    assert router.outbox.lanes["d"].pending == len(committed)
    router.stop(grace_s=0)
    # After a restart the outbox still holds them.
    again = AlertRouter(tmp_path / "outbox", [Destination(name="d", kind="webhook", url="http://127.0.0.1:9/")])
    assert [a.uid for _, a in again.outbox.lanes["d"].snapshot()] == [a.uid for a in committed]
    again.stop(grace_s=0)
