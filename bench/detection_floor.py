"""The same-run baseline of bench/detection.py: the floor of files lost with zero pipeline delay.

After a scenario, the events `dataward run` stored (with the content signals its sampler added)
are read back through the query endpoint and replayed through the pure ``evaluate``, one event
per batch, with the same default policy. The first event that raises a high or critical alert
there is where a detector with no batching, no sampling delay, no queue and no I/O would have
paged; the files damaged by the time the watcher saw that event are the floor. The run's own
``alert_timing`` log lines say where the rest of the time went.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bench.common import REPO
from dwcore.detectors.engine import evaluate
from dwcore.detectors.policy import load_policy
from dwcore.detectors.state import UserState
from dwcore.schemas.event import AccessEvent

SQL = "SELECT * EXCEPT (time), toUnixTimestamp64Milli(time) AS time FROM events ORDER BY time, uid"
HIGH = ("high", "critical")


def recorded_events(data_dir: Path) -> list[AccessEvent]:
    """Every event the stopped `dataward run` stored, as AccessEvents (through `dataward query`)."""
    out = subprocess.run([sys.executable, "-m", "dataward.cli", "query", "--data-dir", str(data_dir), "-f", "jsonl",
                          SQL], capture_output=True, text=True, cwd=REPO, timeout=120, check=True).stdout
    fields = set(AccessEvent.__struct_fields__)  # the table also keeps where each row came from
    return [msgspec.convert({k: v for k, v in json.loads(line).items() if k in fields}, AccessEvent, strict=False)
            for line in out.splitlines() if line.strip()]


@dataclass
class Floor:
    trigger_ms: int | None  # watcher time of the event that first raises high/critical in the replay
    rule: str = ""
    events_before: int = 0  # the user's events up to and including it


def floor(events: list[AccessEvent]) -> Floor:
    policy = load_policy()
    states: dict[str, UserState | None] = {}
    seen: dict[str, int] = {}
    for ev in events:
        user = ev.user_name
        seen[user] = seen.get(user, 0) + 1
        states[user], alerts = evaluate(states.get(user), user, [ev], policy)
        hit = next((a for a in alerts if a.severity in HIGH), None)
        if hit is not None:
            return Floor(ev.time, hit.rule, seen[user])
    return Floor(None)


_TIMING = re.compile(r"alert_timing (.*)")
_KV = re.compile(r"(\w+)=(\S+)")


def alert_timings(log: Path) -> dict[tuple[str, int], dict[str, int]]:
    """(uid, version) -> the stage times (epoch ms) from the run's ``alert_timing`` lines."""
    out: dict[tuple[str, int], dict[str, int]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _TIMING.search(line)
        if not m:
            continue
        fields = dict(_KV.findall(m.group(1)))
        out[(fields["uid"], int(fields["version"]))] = {k: int(v) for k, v in fields.items() if k.endswith("_ms")}
    return out
