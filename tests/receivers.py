"""A real HTTP receiver on 127.0.0.1 for webhook tests: records every request, answers as told."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request arrived
    status: int = 0  # what we answered

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Receiver:
    """``respond(request)`` decides the answer (default 200 "ok")."""

    respond: Callable[[Received], Answer] = lambda req: (200, {}, b"ok")
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                req = Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                               self.rfile.read(length), time.monotonic())
                status, headers, body = receiver.respond(req)
                req.status = status
                receiver.requests.append(req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def ok(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
