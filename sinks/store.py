"""Store: one connection to the forensic history in ClickHouse (embedded chDB or a server).

It opens the backend and hands out its two sides: ``writer`` (schema and inserts,
``store_writer``) and ``reader`` (read-only SQL, ``store_reader``). The embedded mode needs both
on one connection because only one process may open a chDB directory; the distributed sink uses
the writer, ``dataward query`` and the query endpoint use the reader.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from dwcore.logfmt import kv
from dwcore.sinks.chbackend import open_backend, redact_dsn
from dwcore.sinks.errors import StoreError, StoreFailure, StoreUnavailable
from dwcore.sinks.store_reader import IDENT, QueryResult, StoreReader
from dwcore.sinks.store_writer import StoreWriter

__all__ = ["QueryResult", "Store", "StoreError", "StoreFailure", "StoreUnavailable", "open_when_available"]

log = logging.getLogger(__name__)


class Store:
    def __init__(
        self,
        backend_dsn: str,
        database: str = "dataward",
        retention_days: int = 400,
        ttl_days: Mapping[str, int] | None = None,
    ) -> None:
        if not IDENT.match(database):
            raise StoreError(f"database name must be letters, digits and _: {database!r}")
        self.label = redact_dsn(backend_dsn)  # the DSN without password
        self.embedded = self.label.startswith("chdb://")
        self.database = database
        self._backend = open_backend(backend_dsn)
        self._closed = False
        self._lock = threading.Lock()
        self.writer = StoreWriter(self._backend, database, retention_days, self.label, ttl_days)
        self.reader = StoreReader(self._backend, database, self.label, lambda: self._closed)

    @classmethod
    def open(
        cls, dsn: str, database: str = "dataward", retention_days: int = 400, ttl_days: Mapping[str, int] | None = None
    ) -> Store:
        store = cls(dsn, database, retention_days, ttl_days)
        log.info("store_opened %s", kv(store=store.label, database=database))
        return store

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._backend.close()
        log.info("store_closed %s", kv(store=self.label))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_when_available(
    dsn: str,
    database: str,
    retention_days: int,
    wait: Callable[[float], bool],
    backoff: Callable[[], float],
    ttl_days: Mapping[str, int] | None = None,
) -> Store | None:
    """Open the store and ensure its schema, retrying while it is unavailable.

    ``wait(seconds)`` returns True when the caller wants to stop (then None is returned);
    ``backoff()`` gives the next delay."""
    while True:
        try:
            store = Store.open(dsn, database, retention_days, ttl_days)
            try:
                store.writer.ensure_schema()
            except BaseException:
                store.close()
                raise
            return store
        except StoreUnavailable as exc:
            delay = backoff()
            log.warning("store_unavailable %s", kv(backoff_s=f"{delay:.1f}", error=exc))
            if wait(delay):
                return None
