"""Contracts every part shares: event, alert, dead-letter record, topic names, ClickHouse DDL.

Nothing here does I/O or imports another part of dataward.
"""
from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.codec import DecodeError, decode_alert, decode_event, encode, encode_many
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source
from dwcore.schemas.topics import Topics

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
