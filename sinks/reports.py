"""Analyst reports: the questions a SOC asks after an alert, as parameterised read-only SQL.

Each report takes ``run(sql, params) -> QueryResult`` (whichever read path the wiring chose: a
ClickHouse server, the query endpoint of the process that owns chDB, or chDB directly) and returns
a ``Report``: a summary and tables whose first one is the report's main list. Every value an
analyst supplies (a user, a path, a time) travels as a ``{name:Type}`` parameter, never as SQL
text. Times are epoch milliseconds in, 'YYYY-MM-DD hh:mm:ss.mmm' UTC out.

The same questions in raw SQL are in docs/queries.md.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from dwcore.sinks.store_reader import QueryResult

Run = Callable[[str, Mapping[str, Any]], QueryResult]

# Activities that change data; custody lists every access, who-changed and restore only these.
CHANGES = ("Create", "Update", "Delete", "Rename", "Set Attributes", "Set Security", "Encrypt")
# Changes after which the data at a path is not what it was: the candidates for a restore.
DAMAGING = ("Update", "Delete", "Rename", "Set Attributes", "Set Security", "Encrypt")
MAX_MS = 253402300799999  # 9999-12-31, the upper bound of the event contract


class ReportError(Exception):
    pass


class Table(msgspec.Struct):
    title: str
    columns: list[str]
    rows: list[list[Any]]


class Report(msgspec.Struct):
    name: str
    summary: dict[str, Any]
    tables: list[Table]

    @property
    def main(self) -> Table:
        return self.tables[0]


def _table(title: str, result: QueryResult) -> Table:
    return Table(title, list(result.columns), [list(r) for r in result.rows])


def _range(since_ms: int | None, until_ms: int | None) -> dict[str, int]:
    return {"since": int(since_ms or 0), "until": int(until_ms if until_ms is not None else MAX_MS)}


_IN_RANGE = ("time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
             "AND time < fromUnixTimestamp64Milli({until:Int64}, 'UTC')")
_PATH_MATCH = "(path = {path:String} OR startsWith(path, {prefix:String}))"


def path_params(path: str) -> dict[str, str]:
    """A path matches itself and everything under it ("/srv/train" and "/srv/train/" alike)."""
    exact = path.rstrip("/") or "/"
    prefix = exact if exact.endswith("/") else exact + "/"
    return {"path": exact, "prefix": prefix}


def custody(run: Run, path: str, since_ms: int | None = None, until_ms: int | None = None,
            limit: int = 10_000) -> Report:
    """Every access to a path or everything under a prefix, by whom, from where, in order."""
    params = {**path_params(path), **_range(since_ms, until_ms), "limit": limit}
    result = run(
        f"""SELECT time, user_name, device, share, client_ip, process_exe, activity_name, role, path, other_path, uid
FROM events_by_path WHERE {_PATH_MATCH} AND {_IN_RANGE}
ORDER BY time, uid LIMIT {{limit:UInt64}}""",  # noqa: S608 - constant SQL, values are parameters
        params,
    )
    table = _table(f"custody of {path}", result)
    users = sorted({row[1] for row in table.rows})
    return Report("custody", {"path": path, "events": len(table.rows), "users": users,
                              "first": table.rows[0][0] if table.rows else None,
                              "last": table.rows[-1][0] if table.rows else None,
                              "truncated_at_limit": len(table.rows) >= limit}, [table])


def who_changed(run: Run, path: str, since_ms: int | None = None, until_ms: int | None = None) -> Report:
    """Who changed data under a prefix: per user, how much, where from, first and last change."""
    params = {**path_params(path), **_range(since_ms, until_ms), "changes": list(CHANGES)}
    result = run(
        f"""SELECT user_name, count() AS changes, uniqExact(path) AS files,
       arraySort(groupUniqArray(activity_name)) AS activities, arraySort(groupUniqArray(device)) AS devices,
       min(time) AS first_change, max(time) AS last_change
FROM events_by_path
WHERE {_PATH_MATCH} AND {_IN_RANGE} AND activity_name IN {{changes:Array(String)}}
GROUP BY user_name ORDER BY changes DESC, user_name""",  # noqa: S608 - constant SQL
        params,
    )
    table = _table(f"who changed {path}", result)
    return Report("who-changed", {"path": path, "users": len(table.rows)}, [table])


def timeline(run: Run, user: str, since_ms: int | None = None, until_ms: int | None = None) -> Report:
    """One user's activity per minute, by activity, with the alerts raised about them."""
    params = {"user": user, **_range(since_ms, until_ms)}
    minutes = run(
        """SELECT minute, activity_name, sum(events) AS events, uniqMerge(files) AS files,
       sum(bytes_written) AS bytes_written, arraySort(groupUniqArrayMerge(devices)) AS devices
FROM user_minute
WHERE user_name = {user:String}
  AND minute >= toStartOfMinute(fromUnixTimestamp64Milli({since:Int64}, 'UTC'))
  AND minute < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
GROUP BY minute, activity_name ORDER BY minute, activity_name""",
        params,
    )
    alerts = run(
        """SELECT detected_at, severity, rule, uid, first_seen, file_count, title
FROM alerts FINAL
WHERE user = {user:String}
  AND detected_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
  AND detected_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')
ORDER BY detected_at""",
        params,
    )
    table = _table(f"activity of {user} per minute", minutes)
    marks = _table(f"alerts about {user}", alerts)
    total = sum(int(r[2]) for r in table.rows)
    span = _range(since_ms, until_ms)
    return Report("timeline", {"user": user, "since": _iso(span["since"]), "until": _iso(span["until"]),
                               "events": total, "minutes": len({r[0] for r in table.rows}),
                               "alerts": len(marks.rows)}, [table, marks])


def _iso(ms: int) -> str:
    """Epoch ms as the store prints times: 'YYYY-MM-DD hh:mm:ss.mmm' (UTC)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def incident_alert(run: Run, incident: str) -> dict[str, Any]:
    result = run(
        """SELECT uid, title, rule, severity, user, status, version, first_seen, detected_at,
       greatest(last_seen, detected_at) AS last_seen, file_count, devices, shares, tags, drill,
       toUnixTimestamp64Milli(first_seen) AS first_ms,
       toUnixTimestamp64Milli(greatest(last_seen, detected_at)) AS last_ms
FROM alerts FINAL WHERE uid = {incident:String} LIMIT 1""",
        {"incident": incident},
    )
    if not result.rows:
        raise ReportError(f"no incident {incident!r} in the alerts table")
    return dict(zip(result.columns, result.rows[0], strict=True))


def inventory(run: Run, root: str | None = None, device: str | None = None) -> Report:
    """The newest scan of each (device, root): files and bytes by owner, type and age, with the share
    of the bytes each holds and the average age in days."""
    params = {"root": root or "", "device": device or ""}
    latest = """(device, root, scan_id) IN (
    SELECT device, root, argMax(scan_id, scanned_at) FROM inventory
    WHERE ({root:String} = '' OR root = {root:String}) AND ({device:String} = '' OR device = {device:String})
    GROUP BY device, root)"""
    age = "dateDiff('day', mtime, scanned_at)"
    bucket = (f"multiIf({age} < 30, '1: < 30 days', {age} < 180, '2: 30-180 days', {age} < 365, "
              f"'3: 180-365 days', {age} < 730, '4: 1-2 years', '5: > 2 years')")
    parts = [
        f"""SELECT '{by}' AS by, toString({key}) AS key, count() AS files, sum(size) AS bytes,
       round(sum(size) / greatest(1, (SELECT sum(size) FROM inventory WHERE {latest})), 4) AS share_of_bytes,
       round(avg({age}), 1) AS avg_age_days, max(scanned_at) AS scan_time
FROM inventory WHERE {latest} GROUP BY key"""  # noqa: S608 - constant SQL, values are parameters
        for by, key in (("owner", "owner"), ("type", "file_type"), ("age", bucket))
    ]
    result = run(" UNION ALL ".join(parts) + " ORDER BY by, bytes DESC, key", params)
    table = _table("inventory", result)
    owners = [r for r in table.rows if r[0] == "owner"]
    total_files = sum(int(r[2]) for r in owners)
    total_bytes = sum(int(r[3]) for r in owners)
    return Report("inventory", {"root": root or "(all)", "device": device or "(all)", "files": total_files,
                                "bytes": total_bytes}, [table])
