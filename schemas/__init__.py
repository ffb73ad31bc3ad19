"""Contracts every part shares: event, alert, dead-letter record, topic names, ClickHouse DDL.

Nothing here does I/O or imports another part of dataward.
"""
from schemas.alert import Alert, Severity
from schemas.codec import DecodeError, decode_alert, decode_event, encode, encode_many
from schemas.deadletter import DeadLetter
from schemas.event import AccessEvent, Activity, Attribution, Source
from schemas.topics import Topics

__all__ = [
    "AccessEvent",
    "Activity",
    "Alert",
    "Attribution",
    "DeadLetter",
    "DecodeError",
    "Severity",
    "Source",
    "Topics",
    "decode_alert",
    "decode_event",
    "encode",
    "encode_many",
]
