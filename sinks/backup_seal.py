"""Seal a release: object-lock retention (and optionally a legal hold) on the current version of
every object under a prefix, so that nobody (in compliance mode not even the root account) can
delete or overwrite those versions until the date. Suspect versions are refused, not sealed."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from dwcore.logfmt import kv
from dwcore.sinks.backup_model import MANIFEST_DIR
from dwcore.sinks.backup_s3 import list_versions, norm_prefix

log = logging.getLogger(__name__)

MODES = {"governance": "GOVERNANCE", "compliance": "COMPLIANCE"}


class Sealed(msgspec.Struct, frozen=True):
    key: str
    version_id: str
    mode: str
    retain_until: str  # ISO 8601 UTC
    legal_hold: bool
    status: str  # sealed | suspect_refused | error
    detail: str = ""


def seal(s3: Any, bucket: str, prefix: str, days: int, mode: str = "governance", legal_hold: bool = False,
         known: Mapping[str, tuple[int, str]] | None = None, now: dt.datetime | None = None,
         on_done: Callable[[], None] = lambda: None) -> list[Sealed]:
    if mode not in MODES:
        raise ValueError(f"mode must be governance or compliance, got {mode!r}")
    if days < 1:
        raise ValueError("days must be at least 1")
    known = known or {}
    until = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(days=days)
    out: list[Sealed] = []
    current = [v for v in list_versions(s3, bucket, norm_prefix(prefix))
               if v.is_latest and not v.delete_marker and not v.key.startswith(MANIFEST_DIR + "/")]
    for v in current:
        if known.get(v.version_id, (0, ""))[1]:
            out.append(Sealed(v.key, v.version_id, MODES[mode], until.isoformat(), legal_hold, "suspect_refused",
                              f"flagged by incident {known[v.version_id][1]}"))
            on_done()
            continue
        try:
            s3.put_object_retention(Bucket=bucket, Key=v.key, VersionId=v.version_id,
                                    Retention={"Mode": MODES[mode], "RetainUntilDate": until})
            if legal_hold:
                s3.put_object_legal_hold(Bucket=bucket, Key=v.key, VersionId=v.version_id,
                                         LegalHold={"Status": "ON"})
            out.append(Sealed(v.key, v.version_id, MODES[mode], until.isoformat(), legal_hold, "sealed"))
        except Exception as exc:
            out.append(Sealed(v.key, v.version_id, MODES[mode], until.isoformat(), legal_hold, "error",
                              str(exc)[:200]))
        on_done()
    log.info("backup_sealed %s", kv(
        bucket=bucket, prefix=prefix, mode=mode, days=days, objects=sum(s.status == "sealed" for s in out)))
    return out
