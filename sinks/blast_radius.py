"""Blast radius of an incident: what the user touched while it ran, and what must be restored.

An incident's events are the acting user's events from ``before_s`` ahead of its first counted
event to its last one (the ``incident_events`` view). From them: files, directories, hosts,
shares, bytes written, first and last event, every rule that fired about the user in that span,
and the files to restore: paths whose data a damaging change (update, delete, rename away,
encryption, permissions) left different from before, excluding files the incident itself created
(a ransom note needs deleting, not restoring). ``files_to_restore`` is what ``backup restore``
consumes.
"""
from __future__ import annotations

from typing import Any

from dwcore.sinks.reports import DAMAGING, Report, Run, Table, incident_alert

_EVENTS = "incident_events(incident = {incident:String}, before_s = {before_s:UInt32})"


def _params(incident: str, before_s: int) -> dict[str, Any]:
    return {"incident": incident, "before_s": int(before_s), "damaging": list(DAMAGING)}


def restore_table(run: Run, incident: str, before_s: int = 0) -> Table:
    result = run(
        f"""SELECT file_path AS path, argMax(activity_name, time) AS last_change, count() AS changes,
       min(time) AS first_change, max(time) AS last_change_at,
       argMaxIf(file_new_path, time, activity_name = 'Rename') AS renamed_to,
       arraySort(groupUniqArray(device)) AS devices
FROM {_EVENTS}
GROUP BY path
HAVING countIf(activity_name IN {{damaging:Array(String)}}) > 0 AND argMin(activity_name, time) != 'Create'
ORDER BY path""",  # noqa: S608 - constant SQL, values are parameters
        _params(incident, before_s),
    )
    return Table(f"files to restore for incident {incident}", list(result.columns), [list(r) for r in result.rows])


def files_to_restore(run: Run, incident: str, before_s: int = 0) -> list[str]:
    """The paths to restore to their state before the incident, sorted."""
    return [row[0] for row in restore_table(run, incident, before_s).rows]


def incident_events(run: Run, incident: str, before_s: int = 0, limit: int = 10_000) -> Table:
    """Every event of the incident's user in its span (and ``before_s`` ahead of it), in order."""
    result = run(
        f"""SELECT time, activity_name, file_path, file_new_path, device, share, bytes_written, entropy, magic_type, uid
FROM {_EVENTS} ORDER BY time, uid LIMIT {{limit:UInt64}}""",  # noqa: S608 - constant SQL
        {**_params(incident, before_s), "limit": limit},
    )
    return Table(f"events of incident {incident}", list(result.columns), [list(r) for r in result.rows])


def incident(run: Run, incident_uid: str, before_s: int = 0, with_events: bool = False) -> Report:
    alert = incident_alert(run, incident_uid)
    params = _params(incident_uid, before_s)
    radius = run(
        f"""SELECT count() AS events, uniqExact(file_path) AS files,
       uniqExact(arrayStringConcat(arrayPopBack(splitByChar('/', file_path)), '/')) AS directories,
       arraySort(groupUniqArray(device)) AS hosts, arraySort(groupUniqArrayIf(share, share != '')) AS shares,
       sum(ifNull(bytes_written, 0)) AS bytes_written, min(time) AS first_event, max(time) AS last_event,
       arraySort(groupUniqArray(activity_name)) AS activities
FROM {_EVENTS}""",  # noqa: S608 - constant SQL
        params,
    )
    summary: dict[str, Any] = {
        "incident": alert["uid"], "title": alert["title"], "severity": alert["severity"],
        "status": alert["status"], "user": alert["user"], "first_seen": alert["first_seen"],
        "detected_at": alert["detected_at"], "last_seen": alert["last_seen"], "before_s": int(before_s),
    }
    summary.update(dict(zip(radius.columns, radius.rows[0], strict=True)))
    if not summary["events"]:
        summary["first_event"] = summary["last_event"] = None
    rules = run(
        """SELECT rule, severity, uid, detected_at, file_count, title FROM alerts FINAL
WHERE user = {user:String}
  AND detected_at >= fromUnixTimestamp64Milli({first:Int64}, 'UTC') - toIntervalSecond({before_s:UInt32})
  AND first_seen <= fromUnixTimestamp64Milli({last:Int64}, 'UTC')
ORDER BY detected_at""",
        {"user": alert["user"], "first": int(alert["first_ms"]), "last": int(alert["last_ms"]),
         "before_s": int(before_s)},
    )
    summary["rules_fired"] = sorted({row[0] for row in rules.rows})
    files = restore_table(run, incident_uid, before_s)
    summary["files_to_restore"] = len(files.rows)
    tables = [files, Table("rules fired", list(rules.columns), [list(r) for r in rules.rows])]
    if with_events:
        tables.append(incident_events(run, incident_uid, before_s))
    return Report("incident", summary, tables)
