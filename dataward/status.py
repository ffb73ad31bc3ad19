"""`dataward status`: one screen of how the deployment is doing, read from the store.

Agents (their last heartbeat, the lag of the oldest event waiting for Kafka, the spool depth),
open incidents, alert deliveries by status, and the backup (halted or not, the latest run per
source). Everything comes from the tables the sinks already write, so the same command works on a
`dataward run` data dir and against a ClickHouse server. Each section is read on its own: one that
fails shows its error and the others still show.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

Query = Callable[[str], Sequence[Sequence[Any]]]

DELIVERY_WINDOW_H = 24  # the deliveries section's window (in _DELIVERIES_SQL)
MAX_INCIDENTS = 50  # shown; _INCIDENTS_SQL asks for one more to know there are more
STALE_AFTER_BEATS = 3  # an agent silent for this many heartbeat intervals is shown as stale

_AGENTS_SQL = """
SELECT device, agent, argMax(version, time), toUnixTimestamp64Milli(max(time)), argMax(status, time),
       argMax(events_seen, time), argMax(spool_depth, time),
       tupleElement(argMax(tuple(lag_ms), time), 1)  -- in a tuple: argMax skips a bare NULL, the latest may be one
FROM heartbeats GROUP BY device, agent ORDER BY device, agent"""

_INCIDENTS_SQL = """
SELECT uid, argMax(severity, version), argMax(rule, version), argMax(user, version),
       argMax(file_count, version), toUnixTimestamp64Milli(min(first_seen)),
       toUnixTimestamp64Milli(max(detected_at)), argMax(status, version) AS st, argMax(drill, version),
       argMax(devices, version), argMax(title, version), max(severity_id) AS sid
FROM alerts GROUP BY uid HAVING st = 'open'
ORDER BY sid DESC, max(detected_at) DESC LIMIT 51"""

_DELIVERIES_SQL = """
SELECT destination, kind, status, count(), toUnixTimestamp64Milli(max(time)) FROM deliveries
WHERE time > now64(3) - INTERVAL 24 HOUR
GROUP BY destination, kind, status ORDER BY destination, status"""

_HALTS_SQL = """
SELECT incident, argMax(action, time) AS last, toUnixTimestamp64Milli(max(time)), argMax(who, time)
FROM backup_audit WHERE action IN ('halt', 'resume') GROUP BY incident HAVING last = 'halt'
ORDER BY max(time) DESC"""

_RUNS_SQL = """
SELECT source, bucket, prefix, mode, status, toUnixTimestamp64Milli(updated_at), files, bytes, errors, reason
FROM backup_runs FINAL ORDER BY updated_at DESC LIMIT 1 BY source, bucket, prefix"""


class AgentStatus(msgspec.Struct, frozen=True):
    device: str
    agent: str
    version: str
    last_heartbeat: int  # epoch ms
    age_s: float  # how long ago, when the status was taken
    stale: bool  # silent for STALE_AFTER_BEATS heartbeat intervals
    status: str  # ok | kafka_unreachable | spool_full | store_unavailable (the agent's own word)
    events_seen: int
    spool_depth: int  # events not yet acked by Kafka
    lag_ms: int | None  # age of the oldest of them (None: nothing pending)


class IncidentStatus(msgspec.Struct, frozen=True):
    uid: str
    severity: str
    rule: str
    user: str
    files: int
    first_seen: int
    detected_at: int
    drill: bool
    devices: list[str]
    title: str


class DeliveryStatus(msgspec.Struct, frozen=True):
    destination: str
    kind: str
    status: str  # delivered | retry | rejected | disabled | skipped_drill
    count: int
    last: int


class BackupHalt(msgspec.Struct, frozen=True):
    incident: str
    halted_at: int
    by: str


class BackupRun(msgspec.Struct, frozen=True):
    source: str
    bucket: str
    prefix: str
    mode: str
    status: str
    updated_at: int
    files: int
    bytes: int
    errors: int
    reason: str


class BackupStatus(msgspec.Struct, frozen=True):
    state: str  # halted | running | idle | not configured
    halts: list[BackupHalt] = []
    runs: list[BackupRun] = []
    local_halt: bool = False  # the journal in this data dir holds a HALTED marker


class Status(msgspec.Struct, frozen=True):
    taken_at: int
    agents: list[AgentStatus] = []
    open_incidents: int = 0
    incidents: list[IncidentStatus] = []  # the most severe and recent first, at most MAX_INCIDENTS
    deliveries: list[DeliveryStatus] = []  # the last DELIVERY_WINDOW_H hours
    backup: BackupStatus = BackupStatus("not configured")
    errors: dict[str, str] = {}  # section -> why it could not be read


def _section(errors: dict[str, str], name: str, query: Query, sql: str) -> Sequence[Sequence[Any]]:
    try:
        return query(sql)
    except Exception as exc:  # shown in place of the section; the others still show
        errors[name] = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return []


def collect(query: Query, now_ms: int, heartbeat_s: float, local_halt: bool = False,
            backup_configured: bool = False) -> Status:
    errors: dict[str, str] = {}
    agents = []
    for device, agent, version, last, st, seen, spool, lag in _section(errors, "agents", query, _AGENTS_SQL):
        age = max(0.0, (now_ms - int(last)) / 1000)
        stale = heartbeat_s > 0 and age > STALE_AFTER_BEATS * heartbeat_s
        agents.append(AgentStatus(str(device), str(agent), str(version), int(last), round(age, 1), stale, str(st),
                                  int(seen), int(spool), None if lag is None else int(lag)))
    rows = _section(errors, "incidents", query, _INCIDENTS_SQL)
    incidents = [IncidentStatus(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5]), int(r[6]),
                                bool(r[8]), [str(d) for d in r[9]], str(r[10])) for r in rows[:MAX_INCIDENTS]]
    open_count = len(rows)
    if len(rows) > MAX_INCIDENTS:
        counted = _section(errors, "incidents", query,
                           "SELECT count() FROM (SELECT uid FROM alerts GROUP BY uid "
                           "HAVING argMax(status, version) = 'open')")
        open_count = int(counted[0][0]) if counted else open_count
    deliveries = [DeliveryStatus(str(d), str(k), str(s), int(n), int(t))
                  for d, k, s, n, t in _section(errors, "deliveries", query, _DELIVERIES_SQL)]
    halts = [BackupHalt(str(i), int(t), str(w)) for i, _, t, w in _section(errors, "backup", query, _HALTS_SQL)]
    runs = [BackupRun(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]), int(r[7]),
                      int(r[8]), str(r[9])) for r in _section(errors, "backup", query, _RUNS_SQL)]
    if halts or local_halt:
        state = "halted"
    elif any(r.status in ("running", "checkpoint") for r in runs):
        state = "running"
    elif runs or backup_configured:
        state = "idle"
    else:
        state = "not configured"
    return Status(taken_at=now_ms, agents=agents, open_incidents=open_count, incidents=incidents,
                  deliveries=deliveries, backup=BackupStatus(state, halts, runs, local_halt), errors=errors)


def to_json(status: Status) -> bytes:
    return msgspec.json.encode(status)
