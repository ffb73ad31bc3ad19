"""Exact replays: which Kafka messages the store already holds, whatever the batch boundaries.

Every event and dead-letter row records its Kafka position (``_src`` "topic:partition",
``_offset``), written in the same insert as the row itself, so the store is the truth about what
was stored. After a partition is assigned, and after any insert whose outcome is unknown (an error
mid-insert, a timeout), the sink asks the store once which offsets of that partition at or after
the replay start it already holds (a range read on the ``by_source`` projection) and skips those
messages. A crash between insert and commit, a rebalance, or a restart with a different batch size
therefore never stores a message twice, and never skips one that was not stored.

An insert dedup token (``topic:partition:first-last``) still rides along: it makes the common case
(a retry of the very same batch) free, the lookup makes every other case exact.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dwcore.logfmt import kv
from dwcore.schemas.ddl import DEADLETTER_TABLE, EVENTS_TABLE
from dwcore.sinks.stream_writer import EmbeddedStream

__all__ = ["EmbeddedStream", "ReplayGuard"]  # EmbeddedStream lives with the writer both modes share

log = logging.getLogger(__name__)

Rows = Callable[[str, Mapping[str, Any]], list[list[Any]]]

_STORED = (
    f"SELECT _offset FROM {EVENTS_TABLE} WHERE _src = {{src:String}} AND _offset >= {{first:UInt64}} "  # noqa: S608
    f"UNION ALL SELECT _offset FROM {DEADLETTER_TABLE} WHERE _src = {{src:String}} AND _offset >= {{first:UInt64}}"
)


class ReplayGuard:
    def __init__(self, rows: Rows) -> None:
        self._rows = rows
        self._unsure: set[str] = set()  # sources whose stored offsets must be looked up before writing
        self._stored: dict[str, set[int]] = {}
        self.skipped = 0
        self.lookups = 0

    def unsure(self, sources: Iterable[str]) -> None:
        """After an assignment or an insert with an unknown outcome: look before writing again."""
        for src in sources:
            self._unsure.add(src)
            self._stored.pop(src, None)

    def forget(self, sources: Iterable[str]) -> None:
        for src in sources:
            self._unsure.discard(src)
            self._stored.pop(src, None)

    def stored(self, src: str, first: int) -> set[int]:
        """Offsets >= ``first`` of ``src`` already in the store (empty when nothing is in doubt)."""
        if src in self._unsure:
            found = {int(r[0]) for r in self._rows(_STORED, {"src": src, "first": first})}
            self.lookups += 1
            self._unsure.discard(src)
            if found:
                self._stored[src] = found
                log.info("replay_guard %s", kv(src=src, first=first, already_stored=len(found), upto=max(found)))
        return self._stored.get(src, set())

    def committed(self, src: str, upto: int) -> None:
        """Offsets up to ``upto`` are committed: nothing before them will be seen again."""
        seen = self._stored.get(src)
        if seen:
            seen = {o for o in seen if o > upto}
            if seen:
                self._stored[src] = seen
            else:
                self._stored.pop(src, None)
