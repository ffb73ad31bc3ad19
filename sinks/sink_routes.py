"""The distributed sink's routing and decoding: which table takes each topic, and a flush's
messages decoded into one batch per table.

A whole partition's events are validated in one call (``decode_events``); if any message fails,
that partition is decoded one by one so that each bad message becomes a dead letter with its
reason. Messages the store already holds (``ReplayGuard``, after an assignment or an insert with
an unknown outcome) are skipped here, before anything is inserted.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import Message

from dwcore.schemas.codec import DecodeError, decode_alert, decode_deadletter, decode_event, decode_events
from dwcore.schemas.ddl import ALERTS_TABLE, DEADLETTER_TABLE, EVENTS_TABLE, HEARTBEAT_COLUMNS, HEARTBEATS_TABLE
from dwcore.schemas.deadletter import DeadLetter, dead_letter
from dwcore.schemas.heartbeat import decode_heartbeat
from dwcore.schemas.topics import Topics
from dwcore.sinks.jsonl import AlertJsonlWriter
from dwcore.sinks.replay import ReplayGuard
from dwcore.sinks.store_writer import StoreWriter


class Route(NamedTuple):
    """What the sink does with one topic: how to decode a message, which table takes it."""

    table: str
    decode: Callable[[bytes], Any]
    insert: Callable[..., int]  # (records, dedup_token=..., positions=...) -> rows inserted
    on_stored: Callable[[list[Any]], None] | None = None  # after the insert, before the commit
    # A whole partition's messages at once (raises DecodeError if any fails; then one by one).
    decode_many: Callable[[list[bytes | None]], list[Any]] | None = None


class Batch:
    """The rows bound for one table in one flush, with the message and source of each."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.records: list[Any] = []
        self.msgs: list[Message] = []
        self.srcs: list[str] = []

    def add(self, record: Any, msg: Message, src: str) -> None:
        self.records.append(record)
        self.msgs.append(msg)
        self.srcs.append(src)

    def extend(self, records: list[Any], msgs: Sequence[Message], src: str) -> None:
        self.records.extend(records)
        self.msgs.extend(msgs)
        self.srcs.extend([src] * len(records))


def src_of(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def message_deadletter(msg: Message, reason: str, at_ms: int) -> DeadLetter:
    return dead_letter(msg.value() or b"", reason, f"{msg.topic()}:{msg.partition()}:{msg.offset()}", at_ms,
                       key=msg.key())


def _without_positions(insert: Callable[..., int]) -> Callable[..., int]:
    def call(records: list[Any], dedup_token: str | None = None, positions: Any = None) -> int:
        return insert(records, dedup_token=dedup_token)

    return call


class Router:
    """The routes of the sink's four topics, and ``prepare``: pending messages -> table batches."""

    def __init__(self, writer: StoreWriter, topics: Topics, guard: ReplayGuard,
                 alert_writer: AlertJsonlWriter | None = None) -> None:
        self.guard = guard
        self.events_topic = topics.events
        self.deadletter_topic = topics.deadletter
        self.events_prefix = f"{topics.events}:"
        self.positioned = {topics.events, topics.deadletter}  # rows that record their Kafka position
        self.routes: dict[str, Route] = {
            topics.events: Route(EVENTS_TABLE, decode_event, writer.insert_events, decode_many=decode_events),
            topics.alerts: Route(ALERTS_TABLE, decode_alert, _without_positions(writer.insert_alerts),
                                 alert_writer.write_many if alert_writer is not None else None),
            topics.deadletter: Route(DEADLETTER_TABLE, decode_deadletter, writer.insert_deadletters),
            topics.heartbeats: Route(HEARTBEATS_TABLE, decode_heartbeat, _without_positions(
                lambda rows, dedup_token=None: writer.insert(HEARTBEATS_TABLE, HEARTBEAT_COLUMNS, rows, dedup_token))),
        }
        self.deadletters = self.routes[topics.deadletter]

    def prepare(self, groups: Mapping[tuple[str, int], list[Message]]) -> dict[str, Batch]:
        """Decode every group (topic, partition) into one batch per table, skipping what is stored."""
        batches: dict[str, Batch] = {}
        at_ms = now_ms()
        for (topic, partition), msgs in groups.items():
            route = self.routes[topic]
            src = src_of(topic, partition)
            if topic in self.positioned:
                stored = self.guard.stored(src, msgs[0].offset())
                if stored:
                    before = len(msgs)
                    msgs = [m for m in msgs if m.offset() not in stored]
                    self.guard.skipped += before - len(msgs)
            batch = batches.setdefault(route.table, Batch(route))
            if route.decode_many is not None and msgs:
                try:
                    batch.extend(route.decode_many([m.value() for m in msgs]), msgs, src)
                    continue
                except DecodeError:
                    pass  # one by one below: which messages, and why
            dead = batches.setdefault(DEADLETTER_TABLE, Batch(self.deadletters))
            for msg in msgs:
                raw = msg.value()
                if raw is None:
                    dead.add(message_deadletter(msg, "empty message (tombstone)", at_ms), msg, src)
                    continue
                try:
                    record = route.decode(raw)
                except DecodeError as exc:
                    dead.add(message_deadletter(msg, f"sink decode: {exc}", at_ms), msg, src)
                    continue
                if route.table == DEADLETTER_TABLE and record.source.startswith(self.events_prefix):
                    # A worker's dead letter for a message of the events topic: this sink stored
                    # its own row for that message when it failed to decode it here. One row each.
                    self.guard.skipped += 1
                    continue
                batch.add(record, msg, src)
        return {table: b for table, b in batches.items() if b.records}
