"""Encoding on the wire: JSON (readable with kcat, any language can produce it), via msgspec.

Decoding validates types and constraints in one pass; a failure raises DecodeError whose
message says what was wrong and where (msgspec gives the JSON path), for the dead-letter reason.
"""
from __future__ import annotations

from collections.abc import Iterable

import msgspec

from dwcore.schemas.alert import Alert
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.event import AccessEvent

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(AccessEvent)
_alert_decoder = msgspec.json.Decoder(Alert)
_deadletter_decoder = msgspec.json.Decoder(DeadLetter)


class DecodeError(ValueError):
    """Permanent: the bytes can never become an event. Dead-letter them with str(err)."""


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def encode_many(objs: Iterable[msgspec.Struct]) -> list[bytes]:
    enc = _encoder.encode
    return [enc(o) for o in objs]


def decode_event(raw: bytes) -> AccessEvent:
    try:
        return _event_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise DecodeError(f"invalid event: {exc}") from None


def decode_alert(raw: bytes) -> Alert:
    try:
        return _alert_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise DecodeError(f"invalid alert: {exc}") from None


def decode_deadletter(raw: bytes) -> DeadLetter:
    try:
        return _deadletter_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise DecodeError(f"invalid dead letter: {exc}") from None
