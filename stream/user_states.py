"""The worker's users' detector states: the changelog table, decoded copies, and unwritten states.

Writing a user's state after every batch costs one changelog message per user per batch. With
thousands of users and batches of a few hundred events that is about one changelog message per
event, more work than the detectors themselves (profiled at 3-4k events/s per worker, a quarter of
its CPU in the changelog producer, another tenth decoding and encoding states). So:
- a user's state stays decoded between batches, and is encoded and written to the table at most
  every ``every_s`` (or at once when it raised an alert: the state that raised an alert follows it
  to the broker before anything else);
- the events folded into an unwritten state stay unacknowledged until it is written: their offsets
  cannot be committed before the state that counts them is in the changelog. A crash, a kill -9 or
  a lost partition in between replays them against the state the changelog holds, as before.

Holding an event uses faust's own reference count (``Message.incref``): the stream's
acknowledgement after the batch leaves one reference, ours; ``flush`` drops it once the states are
written, which is when the offset becomes committable.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from dwcore.detectors.state import UserState
from dwcore.stream.processing import load_stored, stored_state


class DecodedStates:
    """Decoded detector states kept beside the stored bytes they came from.

    Decoding a user's state costs more than evaluating a few of their events, and a busy worker
    sees most users in every batch. An entry is used only while the mapping still holds the very
    bytes object it was decoded from: a write by anyone else (a changelog recovery after a
    rebalance, a failed batch that never wrote) makes it miss and the state is decoded afresh.
    An entry is taken out while its state is evaluated (evaluation changes it in place), so a
    batch that fails half way can never leave a half-updated state behind.

    A decoded state takes about three times the memory of its bytes (~33 KB against ~11 KB for a
    busy user), so only the ``capacity`` most recently used are kept: the busy users, whose states
    are decoded most often. The dict's order is the order of use (an entry is taken out and put
    back at the end), so the first entry is the one to drop.
    """

    def __init__(self, capacity: int = 5_000) -> None:
        self._live: dict[str, tuple[bytes, UserState, int]] = {}
        self.capacity = capacity
        self.hits = 0
        self.misses = 0

    def take(self, user: str, raw: bytes | None) -> tuple[UserState | None, int]:
        entry = self._live.pop(user, None)
        if entry is not None and raw is not None and entry[0] is raw:
            self.hits += 1
            return entry[1], entry[2]
        self.misses += 1
        return load_stored(raw, user)

    def keep(self, user: str, raw: bytes, state: UserState, offset: int) -> None:
        self._live.pop(user, None)
        self._live[user] = (raw, state, offset)
        if len(self._live) > self.capacity:
            del self._live[next(iter(self._live))]

    def prune(self, stored: Mapping[str, bytes | None]) -> int:
        """Forget users whose stored bytes changed or went (e.g. their partition moved away)."""
        stale = [user for user, (raw, _, _) in self._live.items() if stored.get(user) is not raw]
        for user in stale:
            del self._live[user]
        return len(stale)

    def __len__(self) -> int:
        return len(self._live)


class HeldEvent(Protocol):
    """What is used of a faust event: its message's reference count and the final ack."""

    message: Any

    def ack(self) -> bool: ...


class Unwritten(NamedTuple):
    partition: int  # the source partition of the user's events (their changelog partition)
    state: UserState
    offset: int  # the last source offset folded into it


# Writes one user's stored bytes to the table, in the given changelog partition.
TableWrite = Callable[[str, int, bytes], None]


class UserStates:
    def __init__(self, table: Mapping[str, bytes | None], write: TableWrite, every_s: float) -> None:
        self.table = table
        self._write = write
        self.every_s = every_s
        self.decoded = DecodedStates()
        self._unwritten: dict[str, Unwritten] = {}
        self._taken: dict[str, Unwritten | bytes | None] = {}  # where a taken state came from
        self._held: list[HeldEvent] = []
        self._since: float | None = None  # when the oldest held event was held

    def take(self, user: str) -> tuple[UserState | None, int]:
        """The user's latest state and offset, handed over: evaluation changes it in place, so
        until ``put_back``, ``stage`` or ``write`` nobody else holds it."""
        unwritten = self._unwritten.pop(user, None)
        if unwritten is not None:
            self._taken[user] = unwritten
            return unwritten.state, unwritten.offset
        raw = self.table.get(user)
        self._taken[user] = raw
        return self.decoded.take(user, raw)

    def put_back(self, user: str, state: UserState | None, offset: int) -> None:
        """The state taken is unchanged (e.g. every event was a replay)."""
        source = self._taken.pop(user, None)
        if isinstance(source, Unwritten):
            self._unwritten[user] = source
        elif source is not None and state is not None:
            self.decoded.keep(user, source, state, offset)

    def stage(self, user: str, partition: int, state: UserState, offset: int) -> None:
        """The user's new state, written with the next flush."""
        self._taken.pop(user, None)
        self._unwritten[user] = Unwritten(partition, state, offset)

    def write(self, user: str, partition: int, state: UserState, offset: int) -> None:
        """The user's new state, written now."""
        self._taken.pop(user, None)
        self._unwritten.pop(user, None)
        self._store(user, partition, state, offset)

    def peek(self, user: str) -> tuple[UserState | None, int]:
        """The user's latest state, to read only (not handed over)."""
        state, offset = self.take(user)
        self.put_back(user, state, offset)
        return state, offset

    def hold(self, events: Iterable[HeldEvent], now: float) -> None:
        """Keep the events' offsets uncommittable until the next flush; call this before the
        stream acknowledges them, after their users' states were staged or written."""
        for ev in events:
            ev.message.incref()
            self._held.append(ev)
        if self._held and self._since is None:
            self._since = now

    def due(self, now: float) -> bool:
        return self._since is not None and now - self._since >= self.every_s

    def flush(self) -> tuple[int, int]:
        """Write every unwritten state, then release the held events: (states, events)."""
        unwritten, held = self._unwritten, self._held
        self._unwritten, self._held, self._since = {}, [], None
        for user, (partition, state, offset) in unwritten.items():
            self._store(user, partition, state, offset)
        for ev in held:
            ev.ack()
        return len(unwritten), len(held)

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the unwritten states of partitions this worker lost: their events were never
        released, so the new owner replays them against the changelog's state."""
        lost = [user for user, u in self._unwritten.items() if u.partition in partitions]
        for user in lost:
            del self._unwritten[user]
        return len(lost)

    def prune(self) -> int:
        """After a rebalance: forget decoded copies of states the table no longer holds."""
        return self.decoded.prune(self.table)

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    @property
    def held(self) -> int:
        return len(self._held)

    def _store(self, user: str, partition: int, state: UserState, offset: int) -> None:
        value = stored_state(state, offset)
        self._write(user, partition, value)
        self.decoded.keep(user, value, state, offset)
