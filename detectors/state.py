"""Per-user detector state: small, bounded and serialisable.

It lives as bytes in a faust changelog table (distributed mode) or a dict (embedded mode), so it
must stay small however fast the user works: a user renaming 25,000 files a minute keeps at most
``max(critical_at, threshold) + sample_paths`` times per rule, a sample of paths and a few
counters, never a list of every file. Structs are encoded as arrays (``array_like``) with msgpack
so field names do not repeat in every state blob.
"""
from __future__ import annotations

import msgspec

STATE_VERSION = 1


class Item(msgspec.Struct, array_like=True, omit_defaults=True):
    """Evidence of one matching event, kept only until an incident opens (then counters suffice)."""

    time: int
    path: str
    device: str = ""
    share: str = ""
    new_ext: str | None = None  # for renames that change the extension: the new one ("" = none)
    note: str = ""  # free text worth quoting, e.g. an agent alarm's message


class Incident(msgspec.Struct, array_like=True):
    """One burst of one rule for one user, open until ``cooldown_s`` passes without a match."""

    uid: str
    first_seen: int
    last_seen: int
    count: int  # matching events in the incident: the alert's file_count
    detected_at: int  # time of the event that crossed the level in ``target``
    observed: int  # the window count at that crossing
    target: str  # severity the incident has reached
    emitted: str = ""  # highest severity already alerted ("" = none yet)
    paths: list[str] = []  # earliest first, at most sample_paths
    devices: list[str] = []
    shares: list[str] = []
    ext_changed: int = 0  # renames that changed the extension
    exts: dict[str, int] = {}  # new extension -> count, bounded (see MAX_EXTS)
    note: str = ""


class KeyState(msgspec.Struct, array_like=True):
    """State of one rule for one incident key (``""`` for per-user rules, device/alarm for alarms)."""

    max_time: int = 0
    times: list[int] = []  # sorted, trimmed to the retention and the cap
    pending: list[Item] = []  # evidence of matches while no incident is open, sorted by time
    incident: Incident | None = None


class UserState(msgspec.Struct, array_like=True):
    rules: dict[str, dict[str, KeyState]] = {}
    version: int = STATE_VERSION


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(UserState)


class StateError(ValueError):
    """Permanent: the bytes are not a detector state (corrupt or from an incompatible version)."""


def encode_state(state: UserState) -> bytes:
    return _encoder.encode(state)


def decode_state(raw: bytes) -> UserState:
    try:
        state = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StateError(f"invalid detector state: {exc}") from None
    if state.version != STATE_VERSION:
        raise StateError(f"detector state version {state.version}, expected {STATE_VERSION}")
    return state


def copy_state(state: UserState) -> UserState:
    """A deep copy, so that evaluating never changes the caller's state object."""
    return _decoder.decode(_encoder.encode(state))
