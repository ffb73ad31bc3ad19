"""The version poller, for S3-compatible stores without access logs or notifications.

Each poll lists every object version and delete marker under the prefix (ListObjectVersions) and
compares with the previous listing, kept in ``<data-dir>/s3/versions-*.json``:
- a new version of a key that had none: Create (``PutObject``); of a key that had one: Update
  (an overwrite);
- a new delete marker: Delete (``DeleteMarker``);
- a version that is gone: Delete (``DeleteObjectVersion``): a version purge (a removed delete
  marker is ``DeleteMarkerRemoved``, activity Other: an undelete).
The first poll only records the baseline (an existing bucket is not a burst of creates). The
principal is the version's owner as the listing reports it (attribution ``owner``: the store
does not say who called); a purge has no owner left to report, so its principal is ``unknown``.
Times are the versions' LastModified; a purge is dated by the poll that noticed it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dwcore.agents import s3_state
from dwcore.agents.s3_common import BadRecord, Parsed, event_uid, key_text, reject, s3_event
from dwcore.schemas.event import Activity, Attribution

log = logging.getLogger(__name__)
_SEP = "\x00"


def _owner(entry: dict[str, Any]) -> str:
    owner = entry.get("Owner") or {}
    return str(owner.get("DisplayName") or owner.get("ID") or "unknown")


class VersionPoller:
    def __init__(self, client: Any, bucket: str, prefix: str, data_dir: str | Path,
                 sink: Callable[[Parsed], None], device: str = "s3",
                 clock_ms: Callable[[], int] | None = None) -> None:
        import time

        self.client, self.bucket, self.prefix, self.sink, self.device = client, bucket, prefix, sink, device
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.path = s3_state.state_path(data_dir, "versions", bucket, prefix)
        state = s3_state.load(self.path)
        self.known: dict[str, list[Any]] | None = state.get("versions")  # "key\0vid" -> [owner, marker]
        self.counters = {"polls": 0, "events": 0}

    def _listing(self) -> dict[str, tuple[dict[str, Any], bool]]:
        found: dict[str, tuple[dict[str, Any], bool]] = {}
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for entry in page.get("Versions", []):
                found[f"{entry['Key']}{_SEP}{entry.get('VersionId') or 'null'}"] = (entry, False)
            for entry in page.get("DeleteMarkers", []):
                found[f"{entry['Key']}{_SEP}{entry.get('VersionId') or 'null'}"] = (entry, True)
        return found

    def poll(self) -> Parsed:
        current = self._listing()
        self.counters["polls"] += 1
        out = Parsed()
        if self.known is None:
            log.info("s3_versions_baseline bucket=%s prefix=%s versions=%d", self.bucket, self.prefix, len(current))
        else:
            keys_before = {k.split(_SEP, 1)[0] for k, v in self.known.items() if not v[1]}
            first_version: dict[str, Any] = {}  # key -> LastModified of its oldest version listed now
            for ident, (entry, marker) in current.items():
                key = ident.split(_SEP, 1)[0]
                if not marker and (key not in first_version or entry["LastModified"] < first_version[key]):
                    first_version[key] = entry["LastModified"]
            new = sorted((k for k in current if k not in self.known), key=lambda k: current[k][0]["LastModified"])
            for ident in new:
                entry, marker = current[ident]
                key, vid = ident.split(_SEP, 1)
                if marker:
                    activity, op = Activity.DELETE, "DeleteMarker"
                else:
                    older = key in keys_before or entry["LastModified"] > first_version[key]
                    activity, op = (Activity.UPDATE if older else Activity.CREATE), "PutObject"
                self._add(out, ident, key, vid, op, activity, _owner(entry), Attribution.OWNER,
                          int(entry["LastModified"].timestamp() * 1000), entry.get("Size"))
            now = self.clock_ms()
            for ident in sorted(k for k in self.known if k not in current):
                key, vid = ident.split(_SEP, 1)
                if self.known[ident][1]:  # a delete marker removed: the object is back (an undelete)
                    self._add(out, ident, key, vid, "DeleteMarkerRemoved", Activity.OTHER, "unknown",
                              Attribution.UNKNOWN, now, None)
                else:
                    self._add(out, ident, key, vid, "DeleteObjectVersion", Activity.DELETE, "unknown",
                              Attribution.UNKNOWN, now, None)
        self.known = {k: [_owner(e), m] for k, (e, m) in current.items()}
        if out.events or out.rejects:
            self.sink(out)
        s3_state.save(self.path, {"bucket": self.bucket, "prefix": self.prefix, "versions": self.known})
        self.counters["events"] += len(out.events)
        return out

    def _add(self, out: Parsed, ident: str, key: str, vid: str, op: str, activity: Activity, user: str,
             attribution: Attribution, time_ms: int, size: int | None) -> None:
        text, escaped = key_text(key)
        try:
            out.events.append(s3_event(
                uid=event_uid("poller", self.bucket, key, vid, op), time_ms=time_ms, activity=activity,
                user=user, attribution=attribution, device=self.device, bucket=self.bucket, key=text,
                escaped=escaped, operation=op, s3_version_id=None if vid == "null" else vid,
                file_size=size if isinstance(size, int) else None,
            ))
        except BadRecord as exc:
            out.rejects.append(reject(f"s3://{self.bucket}/{key}?versionId={vid}", str(exc), ident.encode()))
