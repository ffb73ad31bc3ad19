"""A message that could not be used, kept whole with the reason, so nothing is lost."""
from __future__ import annotations

import msgspec


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    raw: bytes  # the message value as received (base64 in JSON)
    key: bytes | None = None
    reason: str  # why it was rejected, e.g. the validation error with its JSON path
    source: str  # where it came from: "topic:partition:offset" or "embedded:<device>"
    time: int  # epoch ms when it was dead-lettered
