"""The two ways to reach ClickHouse: embedded chDB in a directory, or a server over HTTP.

Writes go through one clickhouse-connect client: columnar Native blocks (``sinks.native_block``)
sent as they are. Reads are kept apart from writes because ``readonly=1`` cannot be undone on a
connection: chDB applies per-call settings with SET and cannot restore them once readonly is on.
So each chDB read gets its own short-lived engine connection (about 1 ms), and each server read
carries readonly in its own request. Failures come back as the two kinds in ``sinks.errors``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from dwcore.logfmt import kv
from dwcore.sinks.errors import StoreDiskFull, StoreError, StoreUnavailable
from dwcore.sinks.inflight import InflightReads
from dwcore.sinks.native_block import native_block
from dwcore.sinks.sql_guard import vet

log = logging.getLogger(__name__)

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code:\s*(\d+)")
# Server-side codes that clear up on their own: timeouts, memory, too many parts or queries,
# network, replica/keeper trouble, shutting down.
_RETRIABLE_CODES = frozenset({159, 160, 202, 203, 209, 210, 241, 242, 252, 319, 425, 999})
# A full disk is not a bad row: NOT_ENOUGH_SPACE (243), or a write that failed with ENOSPC (errno
# 28, whatever code wraps it). Read as permanent, every row of the batch would be dead-lettered.
_DISK_FULL_CODE = 243
_DISK_FULL_TEXT = re.compile(r"No space left on device|NOT_ENOUGH_SPACE|not enough space|errno:? 28\b|ENOSPC",
                             re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, for logs and error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return code
    found = _CODE.search(str(exc))
    return int(found.group(1)) if found else None


def classify(exc: Exception, what: str) -> StoreError | StoreUnavailable:
    """Map a driver/engine exception to retriable or permanent."""
    from clickhouse_connect.driver.exceptions import OperationalError

    text = str(exc)
    if isinstance(exc, StoreError | StoreUnavailable):
        return exc
    if "EmbeddedServer already initialized" in text:
        # One engine per process: this process has another directory open, perhaps only through a
        # read that is still running. Not another process: that is the next case.
        return StoreUnavailable(f"{what}: this process already has another chDB directory open ({text})")
    if "Error initializing EmbeddedServer" in text or "Unable to open the chdb engine" in text:
        return StoreUnavailable(f"{what}: the chDB directory is open in another process ({text})")
    code = error_code(exc)
    if code == _DISK_FULL_CODE or (isinstance(exc, OSError) and exc.errno == 28) or _DISK_FULL_TEXT.search(text):
        return StoreDiskFull(f"{what}: the store's disk is full: {text}", code=code)
    if isinstance(exc, OperationalError | ConnectionError | TimeoutError) or code in _RETRIABLE_CODES:
        return StoreUnavailable(f"{what}: {text}", code=code)
    return StoreError(f"{what}: {text}", code=code)


# The parser's own queries (formatQuerySingleLine, EXPLAIN AST, the view lookup) are small.
_VET_SETTINGS = {"max_execution_time": "10", "max_result_rows": "0", "max_result_bytes": "0"}
CLOSE_WAIT_S = 10.0  # a cancelled read stops within a block; this only bounds a stuck one


def quote(value: str) -> str:
    """A ClickHouse string literal."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def setting_sql(name: str, value: str) -> str:
    if not _SETTING_NAME.match(name):
        raise StoreError(f"invalid setting name {name!r}")
    return f"SET {name} = {quote(value)}"


class Backend(Protocol):
    def command(self, sql: str) -> None: ...

    def insert(
        self,
        table: str,
        names: Sequence[str],
        types: Sequence[Any],
        columns: Sequence[Sequence[Any]],
        settings: Mapping[str, str],
    ) -> None: ...

    def read(
        self,
        sql: str,
        fmt: str,
        params: Mapping[str, str],
        settings: Mapping[str, str],
        database: str | None,
        *,
        vet_database: str | None = None,
        tag: str | None = None,
    ) -> bytes: ...

    def cancel(self, tag: str) -> None: ...

    def close(self) -> None: ...


class _ClientWriter:
    """Writes through one clickhouse-connect client; shared by both backends.

    One InsertContext per (table, columns), made once with the column types given (no DESCRIBE
    round trip) and reused for every batch: its types and settings drive the column writers of the
    Native block, which is sent as raw bytes (the same for chDB and a server). A lock per context
    keeps threads that insert into the same table (the embedded mode's batchers, alert router,
    replay) from sharing its state.
    """

    def __init__(self, client: Any, label: str) -> None:
        self._client = client
        self._label = label
        self._contexts: dict[tuple[str, tuple[str, ...]], tuple[Any, threading.Lock]] = {}
        self._contexts_lock = threading.Lock()
        self.contexts_made = 0  # telemetry: stays at one per table however many batches

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except Exception as exc:
            raise classify(exc, f"command on {self._label}") from exc

    def _context(self, table: str, names: Sequence[str], types: Sequence[Any]) -> tuple[Any, threading.Lock]:
        key = (table, tuple(names))
        found = self._contexts.get(key)
        if found is not None:
            return found
        with self._contexts_lock:
            found = self._contexts.get(key)
            if found is None:
                context = self._client.create_insert_context(
                    table, column_names=list(names), column_types=list(types), column_oriented=True)
                found = self._contexts[key] = (context, threading.Lock())
                self.contexts_made += 1
            return found

    def insert(
        self,
        table: str,
        names: Sequence[str],
        types: Sequence[Any],
        columns: Sequence[Sequence[Any]],
        settings: Mapping[str, str],
    ) -> None:
        try:
            context, lock = self._context(table, names, types)
        except Exception as exc:
            raise classify(exc, f"insert into {table} on {self._label}") from exc
        with lock:
            try:
                body = native_block(names, context.column_types, columns, context)
                self._client.raw_insert(table, column_names=list(names), insert_block=body,
                                        settings=dict(settings), fmt="Native")
            except Exception as exc:
                raise classify(exc, f"insert into {table} on {self._label}") from exc

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing is best effort
            log.debug("close_failed %s", kv(backend=self._label), exc_info=True)


class ChdbBackend(_ClientWriter):
    def __init__(self, path: str) -> None:
        import clickhouse_connect

        self.path = os.path.realpath(path)
        try:
            client = clickhouse_connect.get_client(dsn=f"chdb://{self.path}")
        except Exception as exc:
            raise classify(exc, f"open chdb://{self.path}") from exc
        super().__init__(client, f"chdb://{self.path}")
        self._reads = InflightReads()

    def read(
        self,
        sql: str,
        fmt: str,
        params: Mapping[str, str],
        settings: Mapping[str, str],
        database: str | None,
        *,
        vet_database: str | None = None,
        tag: str | None = None,
    ) -> bytes:
        """One read on its own engine connection. ``vet_database``: first let the engine's parser
        prove the statement a plain SELECT over that database (sinks.sql_guard). ``tag``: a label
        that cancel() finds the running query by."""
        # Every read is tagged, so that close() can find it even when the caller gave no tag.
        tag = tag or f"dataward-read-{uuid.uuid4()}"
        with self._reads.track(tag):
            if vet_database:
                # Apart from the query's own session: its result limits must not apply to the
                # parser's answers (an AST has more rows than a small max_result_rows).
                with self._session(database, {**_VET_SETTINGS, "log_comment": tag}) as conn:
                    self._reads.check(tag)
                    sql = vet(lambda s, p: conn.query(s, "TabSeparated", params=dict(p)).bytes() or b"",
                              sql, params, vet_database)
            with self._session(database, {**settings, "log_comment": tag}) as conn:
                self._reads.check(tag)
                try:
                    return conn.query(sql, fmt, params=dict(params)).bytes() or b""
                except Exception as exc:
                    raise classify(exc, "query") from exc

    @contextlib.contextmanager
    def _session(self, database: str | None, settings: Mapping[str, str]) -> Iterator[Any]:
        """A short-lived engine connection with ``settings`` and, last, readonly=1."""
        import chdb

        try:
            conn = chdb.connect(self.path)
        except Exception as exc:
            raise classify(exc, f"open chdb://{self.path}") from exc
        try:
            if database:
                try:
                    conn.query(f"USE `{database}`")
                except Exception:  # before ensure_schema; stay on default
                    log.debug("use_database_failed %s", kv(database=database))
            conn.query(setting_sql("session_timezone", "UTC"))
            for name, value in settings.items():
                conn.query(setting_sql(name, value))
            # Last, so nothing after it (including the SQL's own SETTINGS clause) can lift it.
            conn.query("SET readonly = 1")
            yield conn
        except StoreError:
            raise
        except Exception as exc:
            raise classify(exc, "query") from exc
        finally:
            conn.close()

    def cancel(self, tag: str) -> None:
        """Stop the read labelled ``tag`` (its client went away). A read the engine has not
        registered yet stops at its next step, or at a KILL sent again: call until it is over."""
        self._reads.mark([tag])
        self._kill([tag])

    def _kill(self, tags: list[str]) -> None:
        import chdb

        try:
            conn = chdb.connect(self.path)
        except Exception as exc:
            log.debug("cancel_failed %s", kv(error=str(exc)[:200]))
            return
        try:
            conn.query(f"KILL QUERY WHERE Settings['log_comment'] IN ({', '.join(map(quote, tags))}) ASYNC")
        except Exception as exc:
            log.debug("cancel_failed %s", kv(tags=len(tags), error=str(exc)[:200]))
        finally:
            conn.close()

    def close(self) -> None:
        # A read left running would keep the process's one engine bound to this directory.
        left = self._reads.close(self._kill, CLOSE_WAIT_S)
        if left:
            log.warning("store_reads_still_running %s", kv(backend=self._label, reads=len(left)))
        super().close()


class ServerBackend(_ClientWriter):
    def __init__(self, dsn: str) -> None:
        import clickhouse_connect

        self._dsn_label = redact_dsn(dsn)
        try:
            client = clickhouse_connect.get_client(dsn=dsn, compress=False)
            reader = clickhouse_connect.get_client(dsn=dsn, compress=False, autogenerate_session_id=False)
        except Exception as exc:
            raise classify(exc, f"connect {self._dsn_label}") from exc
        super().__init__(client, self._dsn_label)
        self._reader = reader

    def read(
        self,
        sql: str,
        fmt: str,
        params: Mapping[str, str],
        settings: Mapping[str, str],
        database: str | None,
        *,
        vet_database: str | None = None,
        tag: str | None = None,
    ) -> bytes:
        # vet_database is not applied: a server enforces its own grants on the credentials in the
        # URL, and may be dataward's own endpoint, which vets every statement itself.
        values = {name: unescape_param(text) for name, text in params.items()}
        per_query: dict[str, str] = {**settings, "readonly": "1"}
        if tag:
            per_query["log_comment"] = tag
        if database:
            self._reader.database = database
        try:
            return self._reader.raw_query(sql, parameters=values or None, settings=per_query, fmt=fmt)
        except Exception as exc:
            raise classify(exc, f"query on {self._dsn_label}") from exc

    def cancel(self, tag: str) -> None:
        try:
            self._client.command(f"KILL QUERY WHERE Settings['log_comment'] = {quote(tag)} ASYNC")
        except Exception as exc:
            log.debug("cancel_failed %s", kv(tag=tag, error=str(exc)[:200]))

    def close(self) -> None:
        super().close()
        try:
            self._reader.close()
        except Exception:  # closing is best effort
            log.debug("close_failed %s", kv(backend=self._dsn_label), exc_info=True)


_UNESCAPE = {"t": "\t", "n": "\n", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "\\": "\\", "'": "'"}


def unescape_param(text: str) -> str | None:
    """ClickHouse escaped-text parameter (as sent in ``param_x``) -> Python value."""
    if text == "\\N":
        return None
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_UNESCAPE.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def open_backend(dsn: str) -> Backend:
    from dwcore.extras import require

    require("clickhouse_connect", "store", "the forensic store")
    if dsn.startswith("chdb://"):
        require("chdb", "store", "the embedded store (chDB)")
        path = dsn[len("chdb://") :]
        if not path:
            raise StoreError("chdb DSN needs a directory: chdb:///abs/dir")
        return ChdbBackend(path)
    if dsn.startswith(("http://", "https://")):
        return ServerBackend(dsn)
    raise StoreError(f"unsupported store DSN {redact_dsn(dsn)!r}: use chdb:///dir or http(s)://host:port")
