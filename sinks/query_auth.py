"""Who may ask the query endpoint: the holder of one random token in the data dir (readable by its
owner only), through a loopback Host and no foreign Origin.

The token is the password of ClickHouse's HTTP interface, so every client that speaks it works
unchanged: Basic auth (``curl -u dataward:TOKEN``), the ``X-ClickHouse-User``/``X-ClickHouse-Key``
headers (clickhouse-connect's default), or ``user``/``password`` URL parameters.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from dwcore.logfmt import kv

log = logging.getLogger(__name__)

USER = "dataward"
# clickhouse-connect and most clients send "default" when no user is given; the token is the secret.
ACCEPTED_USERS = frozenset({USER, "default"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask and ignored for an old file
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_token(path: str | Path) -> str:
    """The token in ``path``; made (256 random bits) if missing. A file others can read is replaced."""
    target = Path(path)
    try:
        st = os.stat(target, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 == 0 and st.st_uid == os.geteuid():
            token = target.read_text().strip()
            if len(token) >= 32:
                return token
        log.warning("query_token_replaced path=%s reason=not_private_or_invalid", target)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    write_private(target, token.encode() + b"\n")
    log.info("query_token_created %s", kv(path=target))
    return token


def read_token(path: str | Path) -> str | None:
    try:
        token = Path(path).read_text().strip()
    except OSError:
        return None
    return token or None


def presented(headers: Mapping[str, str], params: Mapping[str, str]) -> tuple[str, str] | None:
    """(user, password) as the client sent them, from whichever of the three places it used."""
    auth = headers.get("authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            user, sep, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None
    if "x-clickhouse-key" in headers or "x-clickhouse-user" in headers:
        return headers.get("x-clickhouse-user", "default"), headers.get("x-clickhouse-key", "")
    if "password" in params or "user" in params:
        return params.get("user", "default"), params.get("password", "")
    return None


def authorised(headers: Mapping[str, str], params: Mapping[str, str], token: str) -> bool:
    creds = presented(headers, params)
    if creds is None:
        return False
    user, password = creds
    # Constant time: the comparison must not tell an attacker how much of the token matched.
    ok = hmac.compare_digest(password.encode(), token.encode())
    return ok and user in ACCEPTED_USERS


def loopback_host(value: str | None) -> bool:
    """A Host header naming loopback: a web page cannot reach the endpoint through DNS rebinding."""
    if not value:
        return False
    host = value.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in LOOPBACK_HOSTS


def loopback_origin(value: str | None) -> bool:
    """No Origin header, or a loopback one: a request made by a foreign web page is refused."""
    if value is None:
        return True
    if not value.lower().startswith("http://"):
        return False
    return loopback_host(value[len("http://") :].split("/", 1)[0])
