"""A message that could not be used, kept whole with the reason, so nothing is lost."""
from __future__ import annotations

import msgspec


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    raw: bytes  # the message value as received (base64 in JSON)
    key: bytes | None = None
    reason: str  # why it was rejected, e.g. the validation error with its JSON path
    source: str  # where it came from: "topic:partition:offset" or "embedded:<device>"
    time: int  # epoch ms when it was dead-lettered
    size: int = 0  # the size of the original message in bytes (raw may hold only a prefix of it)
    truncated: bool = False  # raw is the first MAX_RAW_BYTES of a larger message


# An oversized message keeps its reason, its size and a bounded prefix: base64 of 256 KiB stays well
# under Kafka's default 1 MiB message limit, so the dead letter itself can always be published.
MAX_RAW_BYTES = 256 * 1024


def dead_letter(raw: bytes, reason: str, source: str, time: int, key: bytes | None = None) -> DeadLetter:
    """A dead letter that can always be published and stored, however large the bad message was."""
    size = len(raw)
    if size > MAX_RAW_BYTES:
        return DeadLetter(raw=raw[:MAX_RAW_BYTES], key=key, reason=f"{reason} (message of {size} bytes; "
                          f"first {MAX_RAW_BYTES} kept)", source=source, time=time, size=size, truncated=True)
    return DeadLetter(raw=raw, key=key, reason=reason, source=source, time=time, size=size)
