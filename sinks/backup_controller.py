"""Zero trust: an alert at or above the configured severity, for a user or path we protect, halts
the backup at once. In order: the halt marker is made durable (a restart stays halted), the gate
closes (no new commit, multipart uploads aborted, commits in flight waited for), then, off the
critical path, every version committed since the incident's first event is flagged suspect (the
journal, ClickHouse, an S3 tag) and external backup jobs are paused through hooks. Only
``resume(incident, who)`` lifts a halt, and it is recorded.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from dwcore.logfmt import kv
from dwcore.metrics import BACKUP_HALTS
from dwcore.schemas.alert import SELFTEST_TAG, Alert, Severity
from dwcore.sinks.backup_gate import Gate
from dwcore.sinks.backup_journal import Journal
from dwcore.sinks.backup_model import SUSPECT_TAG, AuditRow, Incident, ManifestRow

log = logging.getLogger(__name__)


class HaltPolicy(msgspec.Struct, frozen=True):
    min_severity: str = "high"
    users: list[str] = []  # empty: every user
    paths: list[str] = []  # empty: every path
    halt_on_drill: bool = True  # a drill flag is set upstream of us; zero trust does not rely on it


class Hooks(msgspec.Struct, frozen=True):
    """Pause/resume an external backup job: a command (no shell) and/or an HTTP POST."""

    pause_command: str = ""
    pause_url: str = ""
    resume_command: str = ""
    resume_url: str = ""
    timeout_s: float = 10.0


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def should_halt(alert: Alert, policy: HaltPolicy) -> bool:
    """Pure: does this alert concern what we protect, at a severity that stops the backup?"""
    if Severity(alert.severity).rank < Severity(policy.min_severity).rank:
        return False
    if alert.drill and not policy.halt_on_drill:
        return False
    if SELFTEST_TAG in alert.tags:  # dataward's own health, not an attack on the data
        return False
    if policy.users and alert.user not in policy.users:
        return False
    if not policy.paths:
        return True
    touched = list(alert.paths) + list(alert.shares)
    if not touched:
        return True  # no path in the alert: we cannot rule out that it concerns ours
    return any(_under(p, r) or _under(r, p) for p in touched for r in policy.paths)


class Recorder:
    """Protocol-like base: where halts and suspect flags go besides the journal (ClickHouse)."""

    def manifest(self, rows: Sequence[ManifestRow]) -> None:
        pass

    def audit(self, rows: Sequence[AuditRow]) -> None:
        pass


def run_hook(command: str, url: str, action: str, incident: Incident, timeout_s: float) -> list[str]:
    """Run the configured command and/or POST to the URL; returns what failed (empty: all fine)."""
    failures: list[str] = []
    payload = {"action": action, **msgspec.structs.asdict(incident)}
    if command:
        env = {**os.environ, "DATAWARD_ACTION": action, "DATAWARD_INCIDENT": incident.uid,
               "DATAWARD_RULE": incident.rule, "DATAWARD_USER": incident.user}
        try:
            done = subprocess.run(shlex.split(command), env=env, timeout=timeout_s, capture_output=True)
            if done.returncode != 0:
                failures.append(f"command exit {done.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            failures.append(f"command {type(exc).__name__}")
    if url:
        req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",  # noqa: S310 - admin-configured
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
                if not 200 <= resp.status < 300:
                    failures.append(f"url status {resp.status}")
        except OSError as exc:
            failures.append(f"url {type(exc).__name__}")
    for failure in failures:
        # The URL may carry a token: never logged.
        log.error("backup_hook_failed %s", kv(action=action, incident=incident.uid, failure=failure))
    return failures


def _now() -> int:
    return int(time.time() * 1000)


class Controller:
    def __init__(self, journal: Journal, gate: Gate, policy: HaltPolicy = HaltPolicy(), *, s3: Any = None,
                 recorder: Recorder | None = None, hooks: Hooks = Hooks(), tag_suspects: bool = True,
                 clock: Callable[[], int] = _now) -> None:
        self.journal, self.gate, self.policy = journal, gate, policy
        self.s3, self.recorder, self.hooks = s3, recorder or Recorder(), hooks
        self.tag_suspects = tag_suspects
        self.clock = clock
        self.latencies_ms: list[float] = []  # alert received -> halt complete, per halt
        self._lock = threading.Lock()
        self._after: list[threading.Thread] = []

    def on_alert(self, alert: Alert) -> Incident | None:
        received = time.monotonic()
        received_ms = self.clock()
        if not should_halt(alert, self.policy):
            return None
        with self._lock:
            known = self.journal.incident(alert.uid)
            if known is not None and (known.resumed_at or self.gate.closed):
                return None  # already halted for it, or a person resumed it after review
            self.journal.write_marker(alert.uid)
            aborted = self.gate.close(f"incident {alert.uid} ({alert.rule}, {alert.severity}, user {alert.user})")
            halted_at = self.clock()
            BACKUP_HALTS.inc()
            latency = (time.monotonic() - received) * 1000
            self.latencies_ms.append(latency)
            incident = Incident(uid=alert.uid, rule=alert.rule, severity=str(alert.severity), user=alert.user,
                                first_seen=alert.first_seen, detected_at=alert.detected_at, received_at=received_ms,
                                halted_at=halted_at, aborted_uploads=aborted)
            self.journal.save_incident(incident)
        log.critical("backup_halted incident=%s rule=%s severity=%s user=%s first_seen=%d aborted_uploads=%d "
                     "alert_to_halt_ms=%.1f", alert.uid, alert.rule, alert.severity, alert.user, alert.first_seen,
                     aborted, latency)
        worker = threading.Thread(target=self._after_halt, args=(incident,), name="dw-backup-after-halt", daemon=True)
        worker.start()
        self._after.append(worker)
        return incident

    def wait_after_halt(self, timeout_s: float = 60.0) -> None:
        for worker in list(self._after):
            worker.join(timeout_s)

    def _after_halt(self, incident: Incident) -> None:
        hook = threading.Thread(target=self._hook, args=("pause", incident), daemon=True)
        hook.start()
        flagged = self.journal.flag_suspect(incident.first_seen, incident.uid)
        rev = self.clock()
        rows = [ManifestRow(bucket=b, key=k, version_id=v, run_id=r, path=p, size=s, sha256=h, uploaded_at=t,
                            suspect=True, incident=incident.uid, rev=rev) for b, k, v, r, p, s, h, t in flagged]
        incident = msgspec.structs.replace(incident, suspect_versions=len(rows))
        self.journal.save_incident(incident)
        self.journal.audit(incident.halted_at, "halt", incident.uid, "dataward",
                           {"rule": incident.rule, "severity": incident.severity, "user": incident.user,
                            "suspect_versions": len(rows), "aborted_uploads": incident.aborted_uploads,
                            "alert_to_halt_ms": incident.halted_at - incident.received_at})
        self._record(rows, AuditRow(time=incident.halted_at, action="halt", incident=incident.uid, who="dataward",
                                    detail=msgspec.json.encode(incident).decode()))
        if self.tag_suspects and self.s3 is not None:
            for row in rows:
                try:
                    self.s3.put_object_tagging(Bucket=row.bucket, Key=row.key, VersionId=row.version_id,
                                               Tagging={"TagSet": [{"Key": SUSPECT_TAG, "Value": incident.uid}]})
                except Exception as exc:
                    log.error("suspect_tag_failed %s", kv(key=row.key, version_id=row.version_id, error=str(exc)[:200]))
        log.warning("backup_suspects_flagged %s", kv(incident=incident.uid, versions=len(rows)))
        hook.join(self.hooks.timeout_s * 2 + 1)

    def _record(self, rows: Sequence[ManifestRow], audit: AuditRow) -> None:
        try:
            if rows:
                self.recorder.manifest(rows)
            self.recorder.audit([audit])
        except Exception as exc:  # ClickHouse down: the journal has it all
            log.error("backup_record_failed %s", kv(error=str(exc)[:300]))

    def _hook(self, action: str, incident: Incident) -> None:
        h = self.hooks
        command, url = (h.pause_command, h.pause_url) if action == "pause" else (h.resume_command, h.resume_url)
        if command or url:
            failures = run_hook(command, url, action, incident, h.timeout_s)
            self.journal.audit(self.clock(), f"hook_{action}", incident.uid, "dataward", {"failures": failures})

    def resume(self, uid: str, who: str) -> Incident:
        """Lift the halt of one incident (recorded with who and when). KeyError if unknown."""
        incident = self.journal.incident(uid)
        if incident is None:
            raise KeyError(uid)
        if incident.resumed_at:
            return incident
        now = self.clock()
        incident = msgspec.structs.replace(incident, resumed_at=now, resumed_by=who)
        self.journal.save_incident(incident)
        self.journal.audit(now, "resume", uid, who, {"halted_at": incident.halted_at})
        self._record([], AuditRow(time=now, action="resume", incident=uid, who=who,
                                  detail=json.dumps({"halted_at": incident.halted_at})))
        self.journal.clear_marker_if_none_open()
        self._hook("resume", incident)
        log.warning("backup_resumed %s", kv(incident=uid, by=who))
        return incident
