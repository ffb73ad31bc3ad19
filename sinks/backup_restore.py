"""Restore a prefix as of a point in time: per object, the newest version not after that point and
never a suspect one; each download is verified against the content hash recorded at upload and
only then moved into place. Keys come from the bucket, which an attacker may have written to, so a
key that would land outside the target directory is refused, never followed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from dwcore.logfmt import kv
from dwcore.sinks.backup_model import ESCAPED_META, MANIFEST_DIR, SHA_META, SUSPECT_TAG, Incident
from dwcore.sinks.backup_s3 import Version, list_versions, norm_prefix, rel_bytes

log = logging.getLogger(__name__)


class Pick(msgspec.Struct, frozen=True):
    key: str
    version: Version | None  # None: no clean version at or before the point
    time_ms: int
    skipped_suspect: int  # newer versions passed over because they are suspect or too new


class Restored(msgspec.Struct, frozen=True):
    key: str
    path: str  # where it went, text form ('' when not written)
    version_id: str
    size: int
    time_ms: int
    status: str  # restored | hash_mismatch | unsafe_key | no_clean_version | error
    detail: str = ""


def version_time(v: Version, known: Mapping[str, tuple[int, str]]) -> int:
    """Our own commit time when dataward wrote it; else S3's (second resolution) rounded up."""
    if v.version_id in known:
        return known[v.version_id][0]
    return v.last_modified_ms + 999


def is_suspect(v: Version, t: int, known: Mapping[str, tuple[int, str]], incidents: Iterable[Incident]) -> bool:
    if v.version_id in known and known[v.version_id][1]:
        return True
    # A version we did not write (or cannot vouch for) inside an incident window is suspect too.
    return any(i.first_seen <= t and (not i.resumed_at or t <= i.resumed_at) for i in incidents)


def pick_versions(versions: Iterable[Version], point_ms: int, known: Mapping[str, tuple[int, str]],
                  incidents: Iterable[Incident]) -> list[Pick]:
    """Pure: the version to restore per key. Delete markers are never restored (zero trust: a delete
    marker may be the attack), and never hide an older clean version."""
    incidents = list(incidents)
    by_key: dict[str, list[tuple[int, Version]]] = {}
    for v in versions:
        if v.delete_marker:
            continue
        by_key.setdefault(v.key, []).append((version_time(v, known), v))
    picks = []
    for key in sorted(by_key):
        passed = 0
        chosen: tuple[int, Version] | None = None
        for t, v in sorted(by_key[key], key=lambda tv: tv[0], reverse=True):
            if t <= point_ms and not is_suspect(v, t, known, incidents):
                chosen = (t, v)
                break
            passed += 1
        picks.append(Pick(key, chosen[1] if chosen else None, chosen[0] if chosen else 0, passed))
    return picks


def suspect_tag(s3: Any, bucket: str, v: Version) -> str:
    try:
        tags = s3.get_object_tagging(Bucket=bucket, Key=v.key, VersionId=v.version_id).get("TagSet", [])
    except Exception as exc:
        log.warning("restore_tag_lookup_failed %s", kv(key=v.key, error=str(exc)[:200]))
        return ""
    return next((t["Value"] for t in tags if t["Key"] == SUSPECT_TAG), "")


def safe_target(target: str, rel: bytes) -> bytes | None:
    """The absolute path for rel under target, or None if rel is absolute, has '..' or empty parts."""
    parts = rel.split(b"/")
    if not rel or rel.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts) or b"\x00" in rel:
        return None
    base = os.path.abspath(os.fsencode(target))
    full = os.path.join(base, rel)
    if os.path.commonpath([base, os.path.abspath(full)]) != base:
        return None
    return full


def restore(s3: Any, bucket: str, prefix: str, target: str, point_ms: int,
            known: Mapping[str, tuple[int, str]], incidents: Iterable[Incident],
            on_total: Callable[[int, int], None] = lambda n, b: None,
            on_done: Callable[[int], None] = lambda b: None) -> list[Restored]:
    prefix = norm_prefix(prefix)
    versions = [v for v in list_versions(s3, bucket, prefix) if not v.key.startswith(MANIFEST_DIR + "/")]
    known = dict(known)
    for v in versions:
        if v.version_id not in known and not v.delete_marker:
            # Not in our journal (restoring on another machine): the S3 tag is the suspect flag.
            tag = suspect_tag(s3, bucket, v)
            if tag:
                known[v.version_id] = (version_time(v, known), tag)
    picks = pick_versions(versions, point_ms, known, incidents)
    on_total(len(picks), sum(p.version.size for p in picks if p.version))
    out: list[Restored] = []
    for pick in picks:
        if pick.version is None:
            out.append(Restored(pick.key, "", "", 0, 0, "no_clean_version",
                                f"{pick.skipped_suspect} newer or suspect versions passed over"))
            on_done(0)
            continue
        out.append(_restore_one(s3, bucket, prefix, target, pick))
        on_done(pick.version.size)
    log.info("backup_restore_done %s", kv(
        bucket=bucket, prefix=prefix, objects=len(out), restored=sum(r.status == "restored" for r in out)))
    return out


def _restore_one(s3: Any, bucket: str, prefix: str, target: str, pick: Pick) -> Restored:
    v = pick.version
    assert v is not None
    try:
        obj = s3.get_object(Bucket=bucket, Key=v.key, VersionId=v.version_id)
    except Exception as exc:
        return Restored(v.key, "", v.version_id, v.size, pick.time_ms, "error", str(exc)[:200])
    meta = obj.get("Metadata", {})
    rel_text = v.key[len(prefix):]
    try:
        rel = rel_bytes(rel_text, meta.get(ESCAPED_META) == "1")
    except ValueError:
        rel = b""
    full = safe_target(target, rel)
    if full is None:
        obj["Body"].close()
        return Restored(v.key, "", v.version_id, v.size, pick.time_ms, "unsafe_key", "outside the target directory")
    os.makedirs(os.path.dirname(full), exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(full), prefix=b".dw-restore-")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in obj["Body"].iter_chunks(1024 * 1024):
                h.update(chunk)
                fh.write(chunk)
        expected = meta.get(SHA_META, "")
        if h.hexdigest() != expected:
            os.unlink(tmp)
            return Restored(v.key, "", v.version_id, v.size, pick.time_ms, "hash_mismatch",
                            f"expected {expected[:12] or 'none recorded'} got {h.hexdigest()[:12]}")
        os.replace(tmp, full)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return Restored(v.key, os.fsdecode(full), v.version_id, v.size, pick.time_ms, "restored")
