"""Heartbeats of the embedded mode's agent, written straight into its own store's ``heartbeats``
table (the distributed agents send the same rows to dw.heartbeats for the sink), so that
`dataward status` shows a `dataward run` like any other agent.

The embedded run has no Kafka: its "spool" is the write-ahead log, i.e. events logged but not yet
stored, and a log that stops draining reads ``store_unavailable`` instead of ``kafka_unreachable``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from dataward import __version__
from dwcore.agents.heartbeat import Heartbeater
from dwcore.logfmt import kv
from dwcore.schemas.ddl import HEARTBEAT_COLUMNS, HEARTBEATS_TABLE
from dwcore.schemas.heartbeat import Heartbeat
from dwcore.sinks.errors import StoreFailure

log = logging.getLogger(__name__)


def embedded_heartbeater(device: str, interval_s: float, seen: Callable[[], int], pending: Callable[[], int],
                         stored: Callable[[], int], writer) -> Heartbeater:
    """``seen``: events the watcher saw; ``pending``: logged, not yet stored; ``stored``: acked so far."""

    def send(hb: Heartbeat) -> None:
        try:
            writer.insert(HEARTBEATS_TABLE, HEARTBEAT_COLUMNS, [hb])
        except StoreFailure as exc:  # the missing row is the signal; one line, not a traceback per beat
            log.warning("heartbeat_not_stored %s", kv(device=device, error=str(exc)[:200]))

    return Heartbeater(device, __version__, interval_s, lambda: (seen(), pending(), stored(), False), send,
                       agent="file", stalled_status="store_unavailable")


def start_heartbeats(device: str, interval_s: float, watcher, wal, writer) -> Heartbeater | None:
    """Rows in the run's own heartbeats table (off with capture.heartbeat_s: 0); the first at once,
    so a fresh run shows in `dataward status` before the first interval."""
    if interval_s <= 0:
        return None
    beats = embedded_heartbeater(device, interval_s, lambda: watcher.counters["seen"], lambda: wal.pending,
                                 lambda: wal.counters["acked"], writer)
    beats.beat()
    beats.start()
    return beats
