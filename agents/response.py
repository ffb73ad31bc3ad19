"""Local response hooks: run a configured command when an alert reaches a severity.

E.g. lock the user out of the share or take a snapshot, seconds before a broker, a worker or a
person could. Safety first: ``dry_run`` (the default) records what would run without running it;
users on ``allow_users`` are never acted on; each command runs without a shell, with a timeout,
at most once per incident and hook (an escalation to a higher severity can trigger a further
hook); a placeholder value that starts with "-" is refused so a hostile user name cannot become
an option. Every decision, run or not, is appended to an audit file as one JSON line.

Placeholders in the command's arguments: {user} {rule} {severity} {alert_uid} {devices} {shares}.
"""
from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from dwcore.logfmt import kv
from dwcore.schemas.alert import Alert

log = logging.getLogger(__name__)

_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}


class Hook(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min_severity: str  # low | medium | high | critical
    command: list[str]  # argv; no shell
    name: str = ""


class ResponseRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of the response audit file."""

    time: int
    alert_uid: str
    rule: str
    severity: str
    user: str
    hook: str
    outcome: str  # ran | failed | timeout | dry_run | skipped_allow_listed | refused_unsafe_value | error
    command: list[str] = []
    returncode: int | None = None
    duration_ms: int | None = None
    output: str = ""


def _values(alert: Alert) -> dict[str, str]:
    return {"{user}": alert.user, "{rule}": alert.rule, "{severity}": str(alert.severity),
            "{alert_uid}": alert.uid, "{devices}": ",".join(alert.devices), "{shares}": ",".join(alert.shares)}


def render(command: Sequence[str], alert: Alert) -> list[str] | None:
    """The argv with placeholders filled in, or None when a filled-in value could pass as an option."""
    values = _values(alert)
    out = []
    for arg in command:
        for key, value in values.items():
            if key in arg:
                if value.startswith("-"):
                    return None
                arg = arg.replace(key, value)
        out.append(arg)
    return out


class ResponseHooks:
    """``on_alert`` decides at once and queues; one worker thread runs commands so the agent's
    event path is never blocked by a slow hook."""

    def __init__(self, hooks: Sequence[Hook], audit_path: str | os.PathLike[str], *, dry_run: bool = True,
                 timeout_s: float = 10.0, allow_users: Sequence[str] = (),
                 runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 clock: Callable[[], float] = time.time) -> None:
        for h in hooks:
            if h.min_severity not in _RANK:
                raise ValueError(f"hook {h.name or h.command}: min_severity must be one of {sorted(_RANK)}")
            if not h.command:
                raise ValueError(f"hook {h.name!r}: empty command")
        self.hooks = list(hooks)
        self.audit_path = Path(audit_path)
        self.dry_run = dry_run
        self.timeout_s = timeout_s
        self.allow_users = frozenset(allow_users)
        self._runner = runner
        self._clock = clock
        self._done: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._queue: queue.Queue[tuple[Alert, int, list[str]] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._enc = msgspec.json.Encoder()
        self._thread = threading.Thread(target=self._work, name="dw-response", daemon=True)
        self._thread.start()
        self.counters = {"ran": 0, "failed": 0, "dry_run": 0, "skipped": 0}

    def on_alert(self, alert: Alert) -> None:
        if alert.drill or alert.status != "open":
            return
        rank = _RANK.get(str(alert.severity), 0)
        for i, hook in enumerate(self.hooks):
            if rank < _RANK[hook.min_severity] or (alert.uid, i) in self._done:
                continue
            self._done[(alert.uid, i)] = None
            while len(self._done) > 10_000:
                self._done.popitem(last=False)
            name = hook.name or hook.command[0]
            if alert.user in self.allow_users:
                self.counters["skipped"] += 1
                self._audit(alert, name, "skipped_allow_listed")
                continue
            argv = render(hook.command, alert)
            if argv is None:
                self.counters["skipped"] += 1
                self._audit(alert, name, "refused_unsafe_value", output="a placeholder value starts with '-'")
                continue
            self._queue.put((alert, i, argv))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            alert, i, argv = item
            hook = self.hooks[i]
            name = hook.name or hook.command[0]
            if self.dry_run:
                self.counters["dry_run"] += 1
                log.warning("response_dry_run %s", kv(hook=name, alert=alert.uid, user=alert.user, command=argv))
                self._audit(alert, name, "dry_run", argv)
                continue
            start = time.monotonic()
            try:
                done = self._runner(argv, capture_output=True, timeout=self.timeout_s, check=False)
                ms = int((time.monotonic() - start) * 1000)
                tail = ((done.stdout or b"") + (done.stderr or b""))[-500:].decode(errors="replace")
                outcome = "ran" if done.returncode == 0 else "failed"
                self.counters["ran" if outcome == "ran" else "failed"] += 1
                self._audit(alert, name, outcome, argv, done.returncode, ms, tail)
                log.warning("response_%s hook=%s alert=%s user=%s rc=%d ms=%d", outcome, name, alert.uid,
                            alert.user, done.returncode, ms)
            except subprocess.TimeoutExpired:
                self.counters["failed"] += 1
                self._audit(alert, name, "timeout", argv, None, int(self.timeout_s * 1000))
                log.error("response_timeout %s", kv(hook=name, alert=alert.uid, timeout_s=self.timeout_s))
            except OSError as exc:
                self.counters["failed"] += 1
                self._audit(alert, name, "error", argv, output=str(exc))
                log.error("response_error %s", kv(hook=name, alert=alert.uid, error=exc))

    def _audit(self, alert: Alert, hook: str, outcome: str, argv: list[str] | None = None,
               rc: int | None = None, ms: int | None = None, output: str = "") -> None:
        rec = ResponseRecord(time=int(self._clock() * 1000), alert_uid=alert.uid, rule=alert.rule,
                             severity=str(alert.severity), user=alert.user, hook=hook, outcome=outcome,
                             command=argv or [], returncode=rc, duration_ms=ms, output=output)
        line = self._enc.encode(rec) + b"\n"
        with self._lock:
            self.audit_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self, timeout: float = 30.0) -> None:
        """Finishes queued hooks (each bounded by its timeout), then stops."""
        self._queue.put(None)
        self._thread.join(timeout)
