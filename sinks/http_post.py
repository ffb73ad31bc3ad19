"""One HTTP POST, with the answer reduced to what delivery decisions need.

http.client rather than a session library: no redirects are followed (a 3xx is an answer, not an
invitation to send the alert elsewhere), and errors never carry the URL, whose path is a credential
for Slack and Teams.
"""
from __future__ import annotations

import email.utils
import http.client
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dwcore.sinks.alert_text import visible

USER_AGENT = "dataward-alerts/1"


@dataclass(frozen=True)
class Response:
    status: int  # 0: no HTTP answer (refused, timeout, TLS)
    latency_ms: float
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""


def post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Response:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout_s,
                                           context=ssl.create_default_context())
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)
    else:
        return Response(0, 0.0, error=f"unsupported URL scheme {parts.scheme!r}")
    start = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        resp = conn.getresponse()
        data = resp.read(4096)
        latency = (time.perf_counter() - start) * 1000
        return Response(resp.status, latency, {k.lower(): v for k, v in resp.getheaders()}, data)
    except (OSError, http.client.HTTPException) as exc:
        latency = (time.perf_counter() - start) * 1000
        return Response(0, latency, error=f"{type(exc).__name__}: {visible(str(exc), 200)}")
    finally:
        conn.close()


def retry_after_s(value: str | None, now_wall_s: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_wall_s)
