"""Follow a log bucket/prefix: read each new log object once, remembering what was read.

Access-log and CloudTrail object names sort by the time they were written, so each round lists
from the oldest key still remembered (``StartAfter``) and reads the keys it has not read yet. The
newest ``MAX_REMEMBERED`` keys are kept in ``<data-dir>/s3/follow-*.json``; an object delivered
later than that many newer ones would be missed (access-log delivery is best-effort and late by
minutes, not by thousands of objects). A key is remembered only after its events are spooled.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dwcore.agents import s3_state
from dwcore.agents.s3_common import Parsed
from dwcore.agents.s3_parse import parse_bytes

log = logging.getLogger(__name__)

MAX_REMEMBERED = 5000
MAX_OBJECT = 512 << 20


class LogFollower:
    """One round per ``poll()``: list, fetch, parse, hand the result to ``sink``, remember."""

    def __init__(self, client: Any, bucket: str, prefix: str, fmt: str, data_dir: str | Path,
                 sink: Callable[[Parsed], None], device: str = "s3", start_after: str = "") -> None:
        self.client, self.bucket, self.prefix, self.fmt = client, bucket, prefix, fmt
        self.sink, self.device = sink, device
        self.path = s3_state.state_path(data_dir, "follow", bucket, prefix, fmt)
        state = s3_state.load(self.path)
        self.seen: list[str] = sorted(state.get("seen", []))
        self.start_after = state.get("start_after", start_after)
        self.counters = {"objects": 0, "events": 0, "rejected": 0, "errors": 0}

    def _list_new(self) -> list[str]:
        seen = set(self.seen)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        after = self.seen[0] if self.seen else self.start_after
        if after:
            kwargs["StartAfter"] = after
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                if obj["Key"] not in seen and not obj["Key"].endswith("/"):
                    keys.append(obj["Key"])
        return sorted(keys)

    def poll(self) -> int:
        """Reads every new log object; returns how many."""
        done = 0
        for key in self._list_new():
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            if obj.get("ContentLength", 0) > MAX_OBJECT:
                log.error("s3_log_object_too_large bucket=%s key=%s bytes=%s action=skipped", self.bucket, key,
                          obj.get("ContentLength"))
                self.counters["errors"] += 1
                data = b""
            else:
                data = obj["Body"].read()
            parsed = parse_bytes(data, self.fmt, f"s3://{self.bucket}/{key}", self.device)
            self.sink(parsed)
            self.counters["objects"] += 1
            self.counters["events"] += len(parsed.events)
            self.counters["rejected"] += len(parsed.rejects)
            self._remember(key)
            done += 1
        return done

    def _remember(self, key: str) -> None:
        self.seen.append(key)
        self.seen.sort()
        del self.seen[: max(0, len(self.seen) - MAX_REMEMBERED)]
        s3_state.save(self.path, {"bucket": self.bucket, "prefix": self.prefix, "format": self.fmt,
                                  "seen": self.seen, "start_after": self.start_after})
