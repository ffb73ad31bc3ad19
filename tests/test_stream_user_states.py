"""The worker's user states between batches, without Kafka: written late, released only after.

The worker writes a user's state to its changelog table at most once a second and keeps the
events folded into it unacknowledged until then; these tests hold it to the promises that make
that safe: nothing is released before the state counting it is in the table, a state changed by
someone else is never overwritten from a stale copy, and a lost partition's states are not written.
"""
from __future__ import annotations

from dwcore.detectors.policy import load_policy
from dwcore.schemas import Activity
from dwcore.schemas.event import make_event
from dwcore.stream.processing import fold_user, load_stored, stored_state
from dwcore.stream.user_states import UserStates

T0 = 1_700_000_000_000


class _Message:
    """The reference count of a faust message: the offset is committable when it drops to 0."""

    def __init__(self) -> None:
        self.refcount = 1  # the stream's own reference

    def incref(self) -> None:
        self.refcount += 1


class _Event:
    def __init__(self) -> None:
        self.message = _Message()
        self.committable = False

    def ack(self) -> bool:
        self.message.refcount -= 1
        assert self.message.refcount >= 0, "acknowledged more often than referenced"
        self.committable = self.message.refcount == 0
        return self.committable


def _renames(user: str, n: int, first: int = 0):
    return [make_event(Activity.RENAME, uid=f"{user}-{i}", time=T0 + i * 10, user_name=user, device="fs1",
                       file_path=f"/d/{i}.csv", file_new_path=f"/d/{i}.txt") for i in range(first, first + n)]


class _Table(dict):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, int]] = []
        self.watched: list[_Event] = []

    def write(self, user: str, partition: int, value: bytes) -> None:
        assert not any(ev.committable for ev in self.watched), "an event was released before its state"
        self.writes.append((user, partition))
        self[user] = value


def _states(every_s: float = 1.0) -> tuple[_Table, UserStates]:
    table = _Table()
    return table, UserStates(table, table.write, every_s=every_s)


def _fold(users: UserStates, user: str, n: int, first: int):
    current, done = users.take(user)
    new, last, alerts = fold_user(current, done, user, _renames(user, n, first), load_policy(),
                                  offsets=list(range(first, first + n)))
    assert new is not None
    return new, last, alerts


def test_events_are_released_only_after_the_state_that_counts_them_is_written():
    table, users = _states()
    events = table.watched = [_Event() for _ in range(10)]
    state, last, _ = _fold(users, "alice", 10, 0)
    users.stage("alice", 3, state, last)
    users.hold(events, now=100.0)
    for ev in events:  # what the stream does after the batch: its own reference goes
        ev.ack()
    assert "alice" not in table and not any(ev.committable for ev in events)
    assert not users.due(100.5) and users.due(101.0)
    assert users.flush() == (1, 10)
    assert table.writes == [("alice", 3)]
    assert all(ev.committable for ev in events)
    stored, offset = load_stored(table["alice"], "alice")
    assert offset == 9 and stored is not None
    assert stored_state(stored, offset) == table["alice"]  # the table holds exactly the state folded
    assert users.flush() == (0, 0)  # nothing twice


def test_the_next_batch_continues_from_the_unwritten_state_not_the_table():
    table, users = _states()
    state, last, alerts = _fold(users, "alice", 20, 0)
    assert alerts == []
    users.stage("alice", 0, state, last)
    # 10 more renames: the mass-rename threshold (25) is crossed only if the first 20 still count,
    # though they are not in the table yet.
    state, last, alerts = _fold(users, "alice", 10, 20)
    assert [(a.rule, a.file_count) for a in alerts] == [("mass_rename", 30)]
    users.write("alice", 0, state, last)  # with an alert: written at once
    assert table.writes == [("alice", 0)] and users.unwritten == 0


def test_decoded_copies_are_reused_and_never_outlive_a_change_by_someone_else():
    table, users = _states()
    state, last, _ = _fold(users, "alice", 5, 0)
    users.write("alice", 0, state, last)
    taken, offset = users.take("alice")
    assert taken is state and offset == 4 and users.decoded.hits == 1  # not decoded again
    users.put_back("alice", taken, offset)
    # A rebalance recovered alice's state from the changelog: different bytes in the table.
    other = UserStates(_Table(), lambda *_: None, 1.0)
    older, older_last, _ = _fold(other, "alice", 2, 0)
    table["alice"] = stored_state(older, older_last)
    assert users.prune() == 1
    taken, offset = users.take("alice")
    assert taken is not state and offset == 1  # the table's state, not the stale copy


def test_states_of_a_lost_partition_are_not_written():
    table, users = _states(every_s=0.0)
    for user, partition, first in (("alice", 1, 0), ("bob", 2, 100)):
        state, last, _ = _fold(users, user, 3, first)
        users.stage(user, partition, state, last)
    held = [_Event()]
    users.hold(held, now=0.0)
    assert users.drop_partitions({1}) == 1
    users.flush()
    assert table.writes == [("bob", 2)]


def test_a_replay_only_batch_leaves_the_state_where_it_was():
    _, users = _states()
    state, last, _ = _fold(users, "alice", 5, 0)
    users.stage("alice", 0, state, last)
    current, done = users.take("alice")
    new, _, alerts = fold_user(current, done, "alice", _renames("alice", 5, 0), load_policy(),
                               offsets=list(range(5)))
    assert new is None and alerts == []
    users.put_back("alice", current, done)
    assert users.unwritten == 1 and users.peek("alice") == (state, 4)


def test_only_the_most_recently_used_states_stay_decoded():
    _, users = _states()
    users.decoded.capacity = 2
    for i, user in enumerate(("alice", "bob", "carol")):
        state, last, _ = _fold(users, user, 2, i * 10)
        users.write(user, 0, state, last)
    assert len(users.decoded) == 2
    users.peek("bob")  # bob is used again: carol is now the older of the two kept
    state, last, _ = _fold(users, "alice", 2, 100)  # alice was dropped: decoded from the table
    assert users.decoded.misses >= 1
    users.write("alice", 0, state, last)
    assert users.prune() == 0 and len(users.decoded) == 2
    hits = users.decoded.hits
    users.peek("bob")
    assert users.decoded.hits == hits + 1  # bob kept, carol dropped
    users.peek("carol")
    assert users.decoded.hits == hits + 1
