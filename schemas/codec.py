"""Encoding on the wire: JSON (readable with kcat, any language can produce it), via msgspec.

Decoding validates types and constraints in one pass; a failure raises DecodeError whose
message says what was wrong and where (msgspec gives the JSON path), for the dead-letter reason.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import msgspec

from dwcore.schemas.alert import Alert
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.delivery import Delivery
from dwcore.schemas.event import AccessEvent
from dwcore.schemas.paths import clean_text, names_text

_encoder = msgspec.json.Encoder()


class DecodeError(ValueError):
    """Permanent: the bytes can never become an event. Dead-letter them with str(err)."""


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def encode_many(objs: Iterable[msgspec.Struct]) -> list[bytes]:
    enc = _encoder.encode
    return [enc(o) for o in objs]


T = TypeVar("T", bound=msgspec.Struct)

_NAME_FIELDS = ("file_path", "file_new_path", "share")


def _encodable(text: object) -> bool:
    if not isinstance(text, str) or text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def repair_event(ev: AccessEvent) -> AccessEvent:
    """``ev`` with every text field that holds raw bytes (surrogate escapes from ``os.fsdecode``)
    in the lossless escaped form, so it can be encoded and stored; unchanged when it already can.

    The three name fields switch to the escaped form together, since one ``names_escaped`` flag
    speaks for all of them."""
    changes: dict[str, object] = {}
    if not all(_encodable(getattr(ev, name)) for name in _NAME_FIELDS):
        if ev.names_escaped:  # already escaped text that still holds raw bytes: escape just those
            for name in _NAME_FIELDS:
                value = getattr(ev, name)
                if value is not None and not _encodable(value):
                    changes[name] = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        else:
            raws = [None if getattr(ev, n) is None else getattr(ev, n).encode("utf-8", "surrogateescape")
                    for n in _NAME_FIELDS]
            texts, escaped = names_text(*raws)
            changes.update(zip(_NAME_FIELDS, texts, strict=True))
            changes["names_escaped"] = escaped
    for name in ev.__struct_fields__:
        if name in _NAME_FIELDS:
            continue
        value = getattr(ev, name)
        if not _encodable(value):
            changes[name] = clean_text(value)
    return msgspec.structs.replace(ev, **changes) if changes else ev


def encodable_events(events: list[AccessEvent]) -> list[AccessEvent]:
    """The batch with any event that could not be encoded repaired (``repair_event``); one
    encode of the whole batch in C when, as nearly always, nothing needs it."""
    try:
        _encoder.encode(events)
        return events
    except UnicodeEncodeError:
        return [repair_event(ev) for ev in events]


def _checked_decoder(kind: type[T], what: str) -> Callable[[bytes], T]:
    """A decoder of one Struct type whose every failure is a DecodeError naming `what` and the reason."""
    decoder = msgspec.json.Decoder(kind)

    def decode(raw: bytes) -> T:
        try:
            return decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise DecodeError(f"invalid {what}: {exc}") from None

    return decode


decode_event = _checked_decoder(AccessEvent, "event")
decode_alert = _checked_decoder(Alert, "alert")
decode_deadletter = _checked_decoder(DeadLetter, "dead letter")
decode_delivery = _checked_decoder(Delivery, "delivery")
_event_decoder = msgspec.json.Decoder(AccessEvent)


def decode_events(raws: Sequence[bytes | None]) -> list[AccessEvent]:
    """A whole batch, one C call per message and no Python frame between them. Raises DecodeError
    if any message fails (the caller then decodes one by one to find which). Deliberately not one
    decode of the messages joined into a JSON array: a crafted pair of messages could straddle the
    boundary between them and be stored as a row of the other's position."""
    dec = _event_decoder.decode
    try:
        return [dec(raw) for raw in raws]  # type: ignore[arg-type]  # None: TypeError, caught below
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise DecodeError(f"invalid event: {exc}") from None
