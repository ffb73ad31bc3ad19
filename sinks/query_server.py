"""Read-only SQL on loopback in the ClickHouse HTTP dialect, served by the process that owns chDB.

Only one process may open a chDB directory, so ``dataward query``, curl and clickhouse-connect
reach the data through this endpoint while the owner runs. It speaks the part of the HTTP
interface those clients use: the query in ``query=`` and/or the POST body (never over GET: 405),
``default_format`` or a trailing ``FORMAT X``, ``param_<name>`` for ``{name:Type}``, ``/ping``.

The owner may run as root and the data is forensic, so every request must:
- name a loopback Host (a web page cannot reach it through DNS rebinding) and no foreign Origin;
- carry the token (``query_auth``) as the ClickHouse HTTP user's password;
- hold one statement that the engine's own parser proves a plain SELECT over dataward's tables
  (``sql_guard``); it runs with readonly=1 under limits on time, memory, result rows and bytes
  (a client may lower them, never raise them); it is killed when its client goes away, and
  stop() kills every query still running (one left behind would hold the store's engine).
Connections are served by one asyncio loop: idle ones cost no thread, their number is bounded
(at the bound, the connection that has waited longest without a request is closed to make room),
and queries run on a small fixed pool of threads.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from pathlib import Path

import msgspec

from dwcore.logfmt import kv
from dwcore.sinks.chbackend import error_code
from dwcore.sinks.errors import StoreError, StoreUnavailable
from dwcore.sinks.http_wire import BadRequest, ClientGone, Connection, Request, response
from dwcore.sinks.inflight import KILL_INTERVAL_S, SubmittedQueries
from dwcore.sinks.query_auth import authorised, loopback_host, loopback_origin, write_private
from dwcore.sinks.sql_guard import format_allowed
from dwcore.sinks.store_reader import READ_SETTINGS_ALLOWLIST, StoreReader, trailing_format

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # a query, not data: reads only
_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
}
# The real server's status for the common errors; anything else is 500, like the server.
_STATUS_BY_CODE = {62: 400, 27: 400, 60: 404, 81: 404, 497: 403, 516: 401}
STOP_WAIT_S = 10.0  # a killed query ends within a block; this only bounds a stuck one


class QueryLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one request may cost. Sized for an analyst's question, not a bulk export."""

    timeout_s: float = 60.0
    max_memory_bytes: int = 1 << 30
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 256 << 20
    max_connections: int = 64  # beyond this a new connection gets 503 and is closed
    max_concurrent_queries: int = 4  # threads that run queries; more requests wait their turn
    idle_timeout_s: float = 30.0  # a keep-alive connection with no request is closed after this

    def settings(self) -> dict[str, str]:
        return {
            "max_execution_time": _num(self.timeout_s),
            "timeout_overflow_mode": "throw",
            "max_memory_usage": str(self.max_memory_bytes),
            "max_result_rows": str(self.max_result_rows),
            "max_result_bytes": str(self.max_result_bytes),
        }


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _clamped(params: dict[str, str], limits: dict[str, str]) -> dict[str, str]:
    """The client's allowlisted settings, with limits only ever lowered (0 means unlimited)."""
    out = {k: v for k, v in params.items() if k in READ_SETTINGS_ALLOWLIST}
    for name, cap in limits.items():
        if name not in out:
            continue
        try:
            asked = float(out.pop(name))
        except ValueError:
            continue
        if 0 < asked < float(cap):
            limits[name] = _num(asked)
    return out


def _error(code: int, text: str) -> bytes:
    return f"Code: {code}. DB::Exception: {text}\n".encode()


class QueryServer:
    def __init__(
        self,
        store: StoreReader,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str,
        limits: QueryLimits | None = None,
    ) -> None:
        if len(token) < 16:
            raise ValueError("the query endpoint needs a token of at least 16 characters")
        self._store = store
        self._host = host
        self._port = port
        self._token = token
        self.limits = limits or QueryLimits()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._killer: concurrent.futures.ThreadPoolExecutor | None = None
        self._addr_file: Path | None = None
        self._address: tuple[str, int] | None = None
        self.connections = 0
        self._waiting: dict[Connection, asyncio.StreamWriter] = {}  # insertion order = oldest first
        self._inflight = SubmittedQueries()
        self.counters = {"queries": 0, "errors": 0, "refused": 0, "unauthorised": 0, "cancelled": 0,
                         "connections_refused": 0, "connections_evicted": 0}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> QueryServer:
        if self._thread is not None:
            return self
        self._pool = concurrent.futures.ThreadPoolExecutor(self.limits.max_concurrent_queries, "query")
        self._killer = concurrent.futures.ThreadPoolExecutor(1, "query-kill")
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve_connection, self._host, self._port, limit=MAX_BODY)
                )
                host, port = self._server.sockets[0].getsockname()[:2]
                self._address = (str(host), int(port))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                # Let every connection close its socket before the loop goes away.
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=serve, name="query-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        log.info("query_server_started %s", kv(url=self.url, max_connections=self.limits.max_connections))
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("QueryServer not started")
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def write_addr_file(self, path: str | Path) -> Path:
        """Write the URL atomically and privately; removed again on stop()."""
        target = Path(path)
        write_private(target, (self.url + "\n").encode())
        self._addr_file = target
        return target

    def stop(self) -> None:
        if self._addr_file is not None:
            self._addr_file.unlink(missing_ok=True)
            self._addr_file = None
        loop, server = self._loop, self._server
        if loop is not None and server is not None and self._thread is not None:
            def shutdown() -> None:
                server.close()
                loop.stop()

            loop.call_soon_threadsafe(shutdown)
            self._thread.join(timeout=5)
        self._thread = None
        self._server = None
        self._loop = None
        # A query left on the pool would hold the store's engine (and a thread) up to its time limit.
        stopped, left = self._inflight.stop(self._store.cancel, STOP_WAIT_S)
        for pool in (self._pool, self._killer):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._killer = None
        if left:
            log.warning("query_server_queries_still_running %s", kv(queries=left))
        log.info("query_server_stopped %s", kv(queries_stopped=stopped))

    def in_flight(self) -> int:
        """Queries submitted and not yet over (waiting for a thread or running)."""
        return len(self._inflight)

    def __enter__(self) -> QueryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connections ----------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.limits.max_connections and not self._evict_waiting():
            self.counters["connections_refused"] += 1
            writer.write(response(503, [("Connection", "close")], _error(202, "too many connections")))
            await self._close(writer)
            return
        self.connections += 1
        conn = Connection(reader)
        try:
            while True:
                self._waiting[conn] = writer
                try:
                    req = await asyncio.wait_for(conn.read_request(MAX_BODY), self.limits.idle_timeout_s)
                except (TimeoutError, ClientGone, ConnectionError):
                    return
                except BadRequest as exc:
                    writer.write(response(400, [("Connection", "close")], _error(27, str(exc))))
                    return
                finally:
                    self._waiting.pop(conn, None)
                status, headers, body = await self._respond(req, conn)
                if not req.keep_alive:
                    headers.append(("Connection", "close"))
                writer.write(response(status, headers, body, head_only=req.method == "HEAD"))
                await writer.drain()
                if not req.keep_alive or conn.eof:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self.connections -= 1
            await self._close(writer)

    def _evict_waiting(self) -> bool:
        """Make room by closing the connection that has waited longest without sending a request:
        idle or slow clients must not lock out one that has a question."""
        if not self._waiting:
            return False
        conn = next(iter(self._waiting))
        self._waiting.pop(conn).transport.abort()
        self.counters["connections_evicted"] += 1
        return True

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            await writer.drain()
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass

    # -- requests -------------------------------------------------------------------------

    async def _respond(self, req: Request, conn: Connection) -> tuple[int, list[tuple[str, str]], bytes]:
        if not loopback_host(req.headers.get("host")) or not loopback_origin(req.headers.get("origin")):
            self.counters["refused"] += 1
            log.warning("query_refused %s", kv(reason="host_not_loopback", host=(req.headers.get("host") or "")[:100]))
            return self._plain(403, _error(497, "dataward: only loopback Host and Origin are served. (ACCESS_DENIED)"),
                               497)
        if req.method not in ("GET", "POST", "HEAD"):
            return self._plain(405, _error(1, f"method {req.method[:20]} not allowed"), None)
        if req.path in ("/ping", "/ping/"):
            return self._plain(200, b"Ok.\n", None)
        if req.path not in ("/", ""):
            return self._plain(404, b"There is no handle " + req.path.encode()[:200] + b"\n", None)
        sql = "\n".join(p for p in (req.params.get("query", ""), req.body.decode("utf-8", "replace")) if p.strip())
        if req.method != "POST":  # before the credentials: a GET query is never tried
            return self._plain(200, b"Ok.\n", None) if not sql.strip() else self._get_refused(req)
        if not authorised(req.headers, req.params, self._token):
            self.counters["unauthorised"] += 1
            log.warning("query_refused %s", kv(reason="bad_credentials"))
            status, headers, body = self._plain(
                401, _error(516, "dataward: authentication failed: user dataward, password from "
                            "<data-dir>/query.token. (AUTHENTICATION_FAILED)"), 516)
            headers.append(("WWW-Authenticate", 'Basic realm="dataward"'))
            return status, headers, body
        if not sql.strip():
            return self._plain(400, _error(62, "Empty query. (SYNTAX_ERROR)"), 62)
        return await self._query(req, sql, conn)

    def _get_refused(self, req: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        # A link, an <img> or a prefetch sends GET: queries are POST only (as clickhouse-connect sends them).
        self.counters["refused"] += 1
        log.warning("query_refused %s", kv(reason="query_over_get", method=req.method))
        text = (f"dataward: queries are accepted over POST only, not {req.method}: send the SQL as the body (curl "
                "--data-binary) or POST with query= in the URL; GET answers only /ping and a bare /. (ACCESS_DENIED)")
        return 405, [*self._headers(None, code=497), ("Allow", "POST")], _error(497, text)

    async def _query(self, req: Request, sql: str, conn: Connection) -> tuple[int, list[tuple[str, str]], bytes]:
        default_fmt = req.params.get("default_format") or "TabSeparated"
        if not format_allowed(default_fmt):
            return self._plain(403, _error(497, f"dataward: output format {default_fmt[:50]} is not allowed. "
                                           "(ACCESS_DENIED)"), 497)
        fmt = trailing_format(sql) or default_fmt
        text_params = {k[len("param_") :]: v for k, v in req.params.items() if k.startswith("param_")}
        limits = self.limits.settings()
        settings = _clamped(req.params, limits)
        query_id = req.params.get("query_id") or str(uuid.uuid4())
        tag = f"dataward-query-{uuid.uuid4()}"
        self.counters["queries"] += 1
        assert self._pool is not None

        def run() -> bytes:
            return self._store.query_bytes(sql, default_fmt, text_params=text_params, settings=settings,
                                           limits=limits, vetted=True, tag=tag)

        running = self._pool.submit(run)
        self._inflight.add(tag, running)
        work = asyncio.wrap_future(running)
        # A query cancelled for a client that left ends in an error nobody reads: consume it.
        work.add_done_callback(lambda f: f.cancelled() or f.exception())
        gone = asyncio.ensure_future(conn.wait_closed_by_peer())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                await self._cancel(running, work, tag, query_id)
                return self._plain(499, b"", None)
            out = work.result()
        except (StoreError, StoreUnavailable) as exc:
            return self._failed(exc, query_id)
        finally:
            gone.cancel()
        if len(out) > self.limits.max_result_bytes:
            # The engine checks its limit between blocks, so one big block can pass it: the
            # answer itself is bounded here.
            return self._failed(StoreError(f"Code: 396. DB::Exception: Limit for result exceeded, max bytes: "
                                           f"{self.limits.max_result_bytes}. (TOO_MANY_ROWS_OR_BYTES)", code=396),
                                query_id)
        return 200, self._headers(fmt, query_id=query_id), out

    async def _cancel(self, running: concurrent.futures.Future[bytes], work: asyncio.Future[bytes], tag: str,
                      query_id: str) -> None:
        """The client went away: kill its query, again until it is over (a KILL misses a query the
        engine has not registered yet). Its own time limit ends it anyway; this only bounds the wait."""
        self.counters["cancelled"] += 1
        log.info("query_cancelled %s", kv(reason="client_gone", query_id=query_id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.timeout_s + STOP_WAIT_S
        while not (running.cancel() or running.done()) and loop.time() < deadline:
            # cancel() succeeds only if it has not started
            await loop.run_in_executor(self._killer, self._store.cancel, tag)
            await asyncio.wait({work}, timeout=KILL_INTERVAL_S)

    def _failed(self, exc: StoreError | StoreUnavailable, query_id: str) -> tuple[int, list[tuple[str, str]], bytes]:
        self.counters["errors"] += 1
        code = exc.code or error_code(exc) or 1000
        text = str(exc)
        # The store prefixes its context ("query: "); clients expect the server's own text.
        text = text[text.find("Code:") :] if "Code:" in text else f"Code: {code}. DB::Exception: {text}"
        log.info("query_failed %s", kv(code=code, query_id=query_id))
        status = 503 if isinstance(exc, StoreUnavailable) else _STATUS_BY_CODE.get(code, 500)
        return status, self._headers(None, code=code, query_id=query_id), text.encode() + b"\n"

    def _plain(self, status: int, body: bytes, code: int | None) -> tuple[int, list[tuple[str, str]], bytes]:
        return status, self._headers(None, code=code), body

    @staticmethod
    def _headers(fmt: str | None, code: int | None = None, query_id: str | None = None) -> list[tuple[str, str]]:
        ctype = _CONTENT_TYPES.get(fmt or "", "application/octet-stream" if fmt else "text/plain; charset=UTF-8")
        headers = [("Content-Type", ctype), ("X-ClickHouse-Timezone", "UTC"),
                   ("X-ClickHouse-Server-Display-Name", "dataward")]
        if fmt:
            headers.append(("X-ClickHouse-Format", fmt))
        if query_id:
            headers.append(("X-ClickHouse-Query-Id", query_id))
        if code is not None:
            headers.append(("X-ClickHouse-Exception-Code", str(code)))
        headers.append(("X-ClickHouse-Summary", '{"read_rows":"0","read_bytes":"0","written_rows":"0"}'))
        return headers
