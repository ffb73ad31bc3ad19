"""``dataward query``: run read-only SQL against whichever store the wiring points at.

Order: a ClickHouse server (an ``http(s)://`` DSN); else the query endpoint of the process that owns the
embedded chDB directory (its address in ``query.addr``, used when it answers /ping; the token in
``query.token`` beside it is sent as the password of user ``dataward``); else open the chDB
directory directly (nobody owns it), read, and close it again. The endpoint and the direct path
run only a plain SELECT over dataward's tables, as the engine's own parser decides; a server
enforces its own grants.
"""
from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec

from dwcore.logfmt import kv
from dwcore.sinks.errors import StoreError, StoreUnavailable
from dwcore.sinks.query_auth import USER, read_token
from dwcore.sinks.store import Store
from dwcore.sinks.store_reader import QueryResult, param_text, parse_json_compact

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 2.0
QUERY_TIMEOUT_S = 300.0


def endpoint_url(addr_file: Path) -> str | None:
    """The endpoint URL from the addr file if its server answers /ping, else None (stale file)."""
    try:
        url = addr_file.read_text().strip()
    except OSError:
        return None
    if not url.startswith("http://"):
        return None
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=PING_TIMEOUT_S) as resp:  # noqa: S310 - http only
            return url if resp.status == 200 and resp.read().startswith(b"Ok.") else None
    except (OSError, urllib.error.URLError):
        log.debug("query_endpoint_stale %s", kv(url=url))
        return None


def query_endpoint(
    url: str,
    sql: str,
    parameters: Mapping[str, Any] | None = None,
    database: str | None = None,
    token: str | None = None,
) -> QueryResult:
    args = {"default_format": "JSONCompact", "output_format_json_quote_64bit_integers": "0"}
    if database:
        args["database"] = database
    args.update({f"param_{k}": param_text(v) for k, v in (parameters or {}).items()})
    headers = {"X-ClickHouse-User": USER, "X-ClickHouse-Key": token} if token else {}
    req = urllib.request.Request(  # noqa: S310 - loopback http
        f"{url}/?{urlencode(args)}", data=sql.encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=QUERY_TIMEOUT_S) as resp:  # noqa: S310 - loopback http
            body = resp.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").strip()
        kind = StoreUnavailable if exc.code == 503 else StoreError
        raise kind(text, code=_header_code(exc.headers.get("X-ClickHouse-Exception-Code"))) from None
    except (OSError, urllib.error.URLError) as exc:
        raise StoreUnavailable(f"query endpoint {url}: {exc}") from None
    try:
        return parse_json_compact(body)
    except msgspec.DecodeError as exc:
        raise StoreError(f"unexpected answer from {url}: {exc}") from None


def _header_code(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def run_query(
    sql: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    dsn: str,
    database: str,
    addr_file: Path,
    token_file: Path | None = None,
) -> QueryResult:
    """``dsn`` is the store's (``chdb:///dir`` or ``http(s)://...``); ``addr_file`` is where the
    process that owns a chDB directory writes its endpoint's address, ``token_file`` (default:
    ``query.token`` beside it) its password."""
    if not dsn.startswith("chdb://"):
        with Store.open(dsn, database) as store:
            return store.reader.query(sql, parameters)
    url = endpoint_url(addr_file)
    if url is not None:
        log.debug("query_via %s", kv(endpoint=url))
        token_path = token_file or addr_file.with_name("query.token")
        token = read_token(token_path)
        if token is None:
            raise StoreError(
                f"cannot read the query token {token_path}: run as the user that owns {addr_file.parent} "
                "(the token is readable by its owner only)"
            )
        return query_endpoint(url, sql, parameters, database, token)
    path = Path(dsn[len("chdb://") :])
    if not path.is_dir():
        raise StoreError(
            f"no dataward store in {path.parent} yet (no {path}): start `dataward run` or the sink "
            "first, or set store.url / CLICKHOUSE_URL"
        )
    try:
        store = Store.open(dsn, database)
    except StoreUnavailable as exc:
        raise StoreUnavailable(
            f"{exc}; the owning process is not serving queries (no live {addr_file})"
        ) from None
    with store:
        return store.reader.query(sql, parameters, vetted=True)
