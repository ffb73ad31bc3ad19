"""Anchor custody chain heads outside the store: one object per head in an object-locked S3 bucket.

Whoever can write to the store could rebuild a whole chain with fresh hashes; they cannot change an
object under COMPLIANCE retention. Since each block hash covers every block before it, anchoring a
chain's head anchors its whole history up to there. ``check_anchors`` compares every anchored hash
with the block of the same stream and sequence in the store.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from dwcore.logfmt import kv
from dwcore.sinks.custody import Rows, block_at, chain_heads

log = logging.getLogger(__name__)


class Anchor(msgspec.Struct):
    stream: str
    seq: int
    block_hash: str
    key: str


class AnchorMismatch(msgspec.Struct):
    stream: str
    seq: int
    key: str
    anchored: str
    in_store: str | None


def _key(prefix: str, stream: str, seq: int) -> str:
    # the stream is "topic:partition": keep it readable, it is a key not a path
    return f"{prefix}{stream}/{seq:012d}.json"


def anchor_heads(rows: Rows, s3: Any, bucket: str, prefix: str = "custody/", days: int = 365,
                 mode: str = "COMPLIANCE") -> list[Anchor]:
    """Put each chain head not yet anchored into ``bucket`` with object-lock retention."""
    until = datetime.now(tz=UTC) + timedelta(days=days)
    done: list[Anchor] = []
    for stream, seq, bhash, last_offset, sealed_at in chain_heads(rows):
        key = _key(prefix, stream, int(seq))
        body = json.dumps({"stream": stream, "seq": int(seq), "block_hash": bhash, "last_offset": int(last_offset),
                           "sealed_at_ms": int(sealed_at)}, sort_keys=True).encode()
        try:
            s3.head_object(Bucket=bucket, Key=key)
            continue  # anchored before: an object under retention is never overwritten
        except s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                      ObjectLockMode=mode.upper(), ObjectLockRetainUntilDate=until)
        log.info("custody_anchored %s", kv(bucket=bucket, key=key, seq=seq))
        done.append(Anchor(stream, int(seq), bhash, key))
    return done


def check_anchors(rows: Rows, s3: Any, bucket: str, prefix: str = "custody/") -> tuple[int, list[AnchorMismatch]]:
    """(anchors checked, mismatches): an anchored hash the store no longer has at that block."""
    checked = 0
    bad: list[AnchorMismatch] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            doc = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            checked += 1
            have = block_at(rows, doc["stream"], int(doc["seq"]))
            if have != doc["block_hash"]:
                bad.append(AnchorMismatch(doc["stream"], int(doc["seq"]), obj["Key"], doc["block_hash"], have))
    return checked, bad
