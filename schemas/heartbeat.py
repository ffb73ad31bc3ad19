"""An agent saying it is alive: the row of the ``heartbeats`` table (same names, same order)."""
from __future__ import annotations

import msgspec

from dwcore.schemas.codec import DecodeError


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    time: int  # epoch ms
    device: str
    agent: str  # file, s3, inventory
    version: str
    events_seen: int
    spool_depth: int  # events not yet acked by Kafka
    lag_ms: int | None = None  # how long the oldest pending event has waited for Kafka (None: nothing pending)
    status: str = "ok"  # ok | kafka_unreachable | spool_full | store_unavailable (embedded run)


_decoder = msgspec.json.Decoder(Heartbeat)


def decode_heartbeat(raw: bytes) -> Heartbeat:
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise DecodeError(f"invalid heartbeat: {exc}") from None
