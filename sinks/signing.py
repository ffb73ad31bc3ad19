"""Standard Webhooks signatures (https://www.standardwebhooks.com), both sides.

A secret is ``whsec_`` + base64 of the key bytes. The signed content is ``"{id}.{timestamp}.{body}"``
(body as sent, byte for byte); the header is ``webhook-signature: v1,<base64 HMAC-SHA256>``, and
may carry several space-separated signatures while a secret is being rotated. Receivers check the
signature in constant time and refuse timestamps too far from now (replays).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix, not a secret
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The message is not authentic (``kind`` = "signature") or too old/new ("timestamp") or the
    headers/secret are unusable ("format")."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional, as in the spec's libs)."""
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("format", "webhook secret is not whsec_<base64>") from None
    if len(key) < 24:
        raise SignatureError("format", "webhook secret is too short (want at least 24 random bytes)")
    return key


def new_secret(nbytes: int = 32) -> str:
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    content = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    now_s: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a received message; returns its webhook-id, raises SignatureError otherwise."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id", "")
    ts_text = lower.get("webhook-timestamp", "")
    sig_header = lower.get("webhook-signature", "")
    if not (msg_id and ts_text and sig_header):
        raise SignatureError("format", "missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(ts_text)
    except ValueError:
        raise SignatureError("format", "webhook-timestamp is not an integer") from None
    expected = sign(key, msg_id, timestamp, body).split(",", 1)[1].encode()
    for candidate in sig_header.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            break
    else:
        raise SignatureError("signature", "no v1 signature matches the body with this secret")
    # Authentic but stale or from the future: refuse, so a captured request cannot be replayed.
    if abs(now_s - timestamp) > tolerance_s:
        raise SignatureError("timestamp", f"webhook-timestamp is {now_s - timestamp:.0f} s from now "
                                          f"(tolerance {tolerance_s:.0f} s)")
    return msg_id


def parse_header_lines(text: str) -> dict[str, str]:
    """Headers as saved by ``curl -D`` or copied from a log: ``Name: value`` lines."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() and not name.startswith(("HTTP/", " ", "\t")):
            out[name.strip().lower()] = value.strip()
    return out
