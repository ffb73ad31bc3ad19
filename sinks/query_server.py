"""Read-only SQL on loopback in the ClickHouse HTTP dialect, served by the process that owns chDB.

Only one process may open a chDB directory, so ``dataward query``, curl and clickhouse-connect
reach the data through this endpoint while the owner runs. It speaks the part of the HTTP
interface those clients use: the query in ``query=`` and/or the POST body, ``default_format`` or a
trailing ``FORMAT X``, ``param_<name>`` for ``{name:Type}`` placeholders, ``database``, ``/ping``.
Every query runs with readonly=1; of the settings in the URL only an allowlist passes through,
everything else (session_id, wait_end_of_query, compression, credentials) is accepted and ignored.
There is no authentication: bind to loopback only.
"""
from __future__ import annotations

import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from dwcore.sinks.chbackend import error_code
from dwcore.sinks.errors import StoreError, StoreUnavailable
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools connections
    server_version = "dataward-query"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # stdlib signature
        log.debug("http %s", format % args)

    def do_GET(self) -> None:  # stdlib naming
        self._handle(b"")

    def do_POST(self) -> None:  # stdlib naming
        try:
            body = self._read_body()
        except ValueError as exc:
            self._send(400, f"Code: 27. DB::Exception: {exc}\n".encode(), "TabSeparated", code=27)
            return
        self._handle(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Content-Encoding"):
            raise ValueError("compressed request bodies are not supported; use compress=False")
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/ping/"):
            self._send(200, b"Ok.\n", None)
            return
        if url.path not in ("/", ""):
            self._send(404, b"There is no handle " + url.path.encode() + b"\n", None)
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        parts = [params.get("query", ""), body.decode("utf-8", errors="replace")]
        sql = "\n".join(p for p in parts if p.strip())
        if not sql.strip():
            if self.command == "GET":
                self._send(200, b"Ok.\n", None)  # a bare GET / answers like the server
            else:
                self._send(400, b"Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)\n", None, code=62)
            return
        fmt = trailing_format(sql) or params.get("default_format") or "TabSeparated"
        text_params = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k in READ_SETTINGS_ALLOWLIST}
        query_id = params.get("query_id") or str(uuid.uuid4())
        self.server.counters["queries"] += 1
        try:
            out = self.server.store.query_bytes(
                sql,
                params.get("default_format") or "TabSeparated",
                text_params=text_params,
                settings=settings,
                database=params.get("database") or None,
            )
        except (StoreError, StoreUnavailable) as exc:
            self.server.counters["errors"] += 1
            code = exc.code or error_code(exc) or 1000
            text = str(exc)
            # The store prefixes its context ("query: "); clients expect the server's own text.
            text = text[text.find("Code:") :] if "Code:" in text else f"Code: {code}. DB::Exception: {text}"
            log.info("query_refused code=%d query_id=%s", code, query_id)
            status = 503 if isinstance(exc, StoreUnavailable) else _STATUS_BY_CODE.get(code, 500)
            self._send(status, text.encode() + b"\n", None, code=code, query_id=query_id)
            return
        self._send(200, out, fmt, query_id=query_id)

    def _send(
        self, status: int, body: bytes, fmt: str | None, code: int | None = None, query_id: str | None = None
    ) -> None:
        self.send_response(status)
        ctype = _CONTENT_TYPES.get(fmt or "", "application/octet-stream" if fmt else "text/plain; charset=UTF-8")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Timezone", "UTC")
        self.send_header("X-ClickHouse-Server-Display-Name", "dataward")
        if fmt:
            self.send_header("X-ClickHouse-Format", fmt)
        if query_id:
            self.send_header("X-ClickHouse-Query-Id", query_id)
        if code is not None:
            self.send_header("X-ClickHouse-Exception-Code", str(code))
        self.send_header("X-ClickHouse-Summary", '{"read_rows":"0","read_bytes":"0","written_rows":"0"}')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], store: StoreReader) -> None:
        super().__init__(addr, _Handler)
        self.store = store
        self.counters = {"queries": 0, "errors": 0}


class QueryServer:
    def __init__(self, store: StoreReader, host: str = "127.0.0.1", port: int = 0) -> None:
        self._store = store
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._addr_file: Path | None = None

    def start(self) -> QueryServer:
        if self._server is not None:
            return self
        self._server = _Server((self._host, self._port), self._store)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="query-server", daemon=True
        )
        self._thread.start()
        log.info("query_server_started url=%s", self.url)
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("QueryServer not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._server.counters) if self._server else {}

    def write_addr_file(self, path: str | Path) -> Path:
        """Write the URL atomically so a reader never sees half of it; removed again on stop()."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(self.url + "\n")
        tmp.replace(target)
        self._addr_file = target
        return target

    def stop(self) -> None:
        if self._addr_file is not None:
            self._addr_file.unlink(missing_ok=True)
            self._addr_file = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        log.info("query_server_stopped")

    def __enter__(self) -> QueryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
