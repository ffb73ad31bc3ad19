"""The distributed sink's inserts: one batch per table, the store's refusals isolated to the
rows it refuses, each of those dead-lettered with the store's reason.

A refused batch is halved down to the refused rows (``insert_isolating``, the same in both
modes); the rest of the batch is stored. A store that is unavailable (``StoreUnavailable``) is not
a refusal: it propagates, and the sink keeps the whole flush for a retry.
"""
from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Message

from dwcore.logfmt import kv
from dwcore.metrics import DEADLETTERS, ROWS_STORED, deadletter_reason
from dwcore.schemas.ddl import DEADLETTER_TABLE
from dwcore.sinks.sink_routes import Batch, Route, Router, message_deadletter, now_ms
from dwcore.sinks.sink_stats import SinkCounters
from dwcore.sinks.stream_writer import dedup_token, insert_isolating

log = logging.getLogger(__name__)


class BatchInserter:
    def __init__(self, router: Router, counters: SinkCounters) -> None:
        self.router = router
        self.counters = counters

    def store(self, table: str, batch: Batch) -> None:
        """Insert one table's batch; refused rows become dead letters; then the route's on_stored."""
        refused = self._insert_or_refuse(batch.route, batch.records, batch.msgs, batch.srcs)
        stored = [r for r in batch.records if id(r) not in refused] if refused else batch.records
        self.counters.inserted[table] = self.counters.inserted_into(table) + len(stored)
        ROWS_STORED.labels(table).inc(len(stored))
        if table == DEADLETTER_TABLE:
            # dead letters made here (undecodable messages), not those read from the dead-letter topic
            dl_topic = self.router.deadletter_topic
            made_here = [r for r, m in zip(batch.records, batch.msgs, strict=True)
                         if id(r) not in refused and m.topic() != dl_topic]
            self.counters.deadlettered += len(made_here)
            for r in made_here:
                DEADLETTERS.labels(deadletter_reason(r.reason)).inc()
        if batch.route.on_stored is not None and stored:
            # After the insert, before the commit: a replay may repeat a line (same uid), never skip one.
            batch.route.on_stored(stored)

    def _insert_or_refuse(self, route: Route, records: list[Any], msgs: list[Message], srcs: list[str]) -> set[int]:
        """Insert; if the store refuses, halve down to the refused rows and dead-letter each with
        the store's reason. Returns the ids of the refused records."""
        offsets = [m.offset() for m in msgs]
        positioned = msgs[0].topic() in self.router.positioned

        def insert(lo: int, hi: int) -> None:
            route.insert(records[lo:hi], dedup_token=dedup_token(route.table, srcs[lo:hi], offsets[lo:hi]),
                         positions=(srcs[lo:hi], offsets[lo:hi]) if positioned else None)

        refused: set[int] = set()
        for i, exc in insert_isolating(insert, len(records)):
            self.counters.errors += 1
            log.error("insert_refused %s", kv(table=route.table, source=f"{srcs[i]}:{offsets[i]}", error=exc))
            if route.table == DEADLETTER_TABLE and records[i].reason.startswith("store refused"):
                raise exc  # a refused dead letter cannot be parked in the dead-letter table: keep retrying
            letter = message_deadletter(msgs[i], f"store refused row: {exc}", now_ms())
            self._insert_or_refuse(self.router.deadletters, [letter], [msgs[i]], [srcs[i]])
            self.counters.deadlettered += 1
            DEADLETTERS.labels("store_refused").inc()
            refused.add(id(records[i]))
        return refused
