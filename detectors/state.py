"""Per-user detector state: small, bounded and serialisable.

It lives as bytes in a faust changelog table (distributed mode) or a dict (embedded mode), so it
must stay small however fast the user works: per rule at most ``max(critical_at, threshold) +
sample_paths`` event times and ``threshold`` pending evidence items; per incident a sample of paths
and counters; fixed-size feature rings (``horizons``) and Bloom filters (``memory``); never a list of
every file. Structs are encoded as arrays (``array_like``) with msgpack so field names do not repeat.
"""
from __future__ import annotations

import msgspec

from dwcore.detectors.baseline import Ewma
from dwcore.detectors.features import Memory
from dwcore.detectors.horizons import Horizons

STATE_VERSION = 2


class Item(msgspec.Struct, array_like=True, omit_defaults=True):
    """Evidence of one matching event, kept only until an incident opens (then counters suffice)."""

    time: int
    path: str
    device: str = ""
    share: str = ""
    new_ext: str | None = None  # for renames that change the extension: the new one ("" = none)
    note: str = ""  # free text worth quoting, e.g. an agent alarm's message
    kind: str = ""  # long_lived | churn | new
    kib: int = 0
    why: str = ""  # content evidence ("entropy 4.6->8.0")


class Counter(msgspec.Struct, array_like=True):
    """One rule's exact sliding window for one counting key."""

    max_time: int = 0
    times: list[int] = []  # sorted, trimmed to two windows and the cap
    pending: list[Item] = []  # evidence while the rule has not fired, sorted by time


class RuleHit(msgspec.Struct, array_like=True):
    """A rule that fired within an incident: the real peak, not the threshold."""

    level: str
    observed: int  # fullest window count seen
    threshold: int  # what that level needed
    window_s: float
    first_seen: int
    last_seen: int
    count: int = 0  # matching events while the incident was open
    family: str = ""  # rules of one family corroborate nothing (see incident.FAMILY)


class Incident(msgspec.Struct, array_like=True):
    """A user's findings within a horizon: open until every fired rule's cooldown passes quietly."""

    uid: str
    first_seen: int
    last_seen: int
    detected_at: int  # time of the event that raised ``target``
    target: str  # severity reached
    quiet_ms: int  # closes after this much quiet (event time)
    count: int = 0  # files: matching events while open (each event once)
    emitted: str = ""  # severity of the last alert version
    version: int = 0  # last alert version sent (0 = none yet)
    emitted_count: int = 0
    emitted_rules: list[str] = []
    emitted_places: int = 0
    rules: dict[str, RuleHit] = {}
    paths: list[str] = []  # earliest first, at most sample_paths
    devices: list[str] = []
    shares: list[str] = []
    ext_changed: int = 0  # renames that changed the extension
    exts: dict[str, int] = {}  # new extension -> count, bounded (see incident.MAX_EXTS)
    kinds: dict[str, int] = {}  # long_lived / churn / new -> files
    kib: int = 0
    why: list[str] = []  # a few content-evidence samples
    note: str = ""
    peak_rate: float = 0.0  # fastest 10 s of the incident, events per second
    closed: bool = False
    drill: bool = False  # opened by a drill's events only (see detectors/drill.py): never paged


class UserState(msgspec.Struct, array_like=True):
    counters: dict[str, dict[str, Counter]] = {}  # rule -> counting key -> window
    incidents: dict[str, Incident] = {}  # incident key ("" = the user's) -> incident
    memory: Memory = msgspec.field(default_factory=Memory)
    horizons: Horizons = msgspec.field(default_factory=Horizons)
    baseline: Ewma = msgspec.field(default_factory=Ewma)
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
