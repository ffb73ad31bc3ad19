"""The HTTP/1.1 wire format the query endpoint needs, over asyncio streams.

Own buffer instead of StreamReader's helpers: while a query runs, the endpoint keeps reading the
connection to notice a client that went away, and bytes a client pipelines meanwhile must not be lost.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 64 * 1024
READ_CHUNK = 64 * 1024


class BadRequest(Exception):
    """The bytes are not an HTTP request we serve (answer 400 and close)."""


class ClientGone(Exception):
    """The peer closed the connection."""


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    keep_alive: bool


@dataclass(eq=False)  # hashable by identity: the server keeps waiting connections in a dict
class Connection:
    reader: asyncio.StreamReader
    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False

    async def _fill(self) -> None:
        data = await self.reader.read(READ_CHUNK)
        if not data:
            self.eof = True
            raise ClientGone
        self.buf += data

    async def _read_until(self, marker: bytes, limit: int) -> bytes:
        while True:
            at = self.buf.find(marker)
            if at >= 0:
                out = bytes(self.buf[: at + len(marker)])
                del self.buf[: at + len(marker)]
                return out
            if len(self.buf) > limit:
                raise BadRequest("request head too large")
            await self._fill()

    async def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_request(self, max_body: int) -> Request:
        head = await self._read_until(b"\r\n\r\n", MAX_HEAD)
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise BadRequest("malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise BadRequest("unsupported HTTP version")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest("malformed header")
            headers[name.lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(max_body)
        else:
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                raise BadRequest("bad Content-Length") from None
            if length < 0 or length > max_body:
                raise BadRequest("request body too large")
            body = await self._read_exactly(length) if length else b""
        url = urlsplit(target)
        conn_hdr = headers.get("connection", "").lower()
        keep = "close" not in conn_hdr if version == "HTTP/1.1" else "keep-alive" in conn_hdr
        return Request(method, url.path, dict(parse_qsl(url.query, keep_blank_values=True)), headers, body, keep)

    async def _read_chunked(self, max_body: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = await self._read_until(b"\r\n", 1024)
            try:
                size = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise BadRequest("bad chunk size") from None
            if size == 0:
                while await self._read_until(b"\r\n", MAX_HEAD) != b"\r\n":
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > max_body:
                raise BadRequest("request body too large")
            chunks.append(await self._read_exactly(size))
            await self._read_exactly(2)

    async def wait_closed_by_peer(self) -> None:
        """Return once the peer closes; bytes it sends meanwhile stay buffered for the next request."""
        while True:
            try:
                await self._fill()
            except ClientGone:
                return
            if len(self.buf) > MAX_HEAD:
                # A client that floods while its query runs is treated as gone.
                return


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def response(status: int, headers: list[tuple[str, str]], body: bytes, head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head_only else out + body
