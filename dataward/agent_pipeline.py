"""Builds the file agent's enrichment stages and side watches from the typed config (wiring only).

Order of the stages: who (audit join) -> canary marks -> what was written (content) -> the fast
path (detectors on the enriched events, local alerts and response hooks). Every batch passes them
under one lock, because canary reads arrive from their own thread.
"""
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dataward.config import Config
from dwcore.agents.content import ContentSampler
from dwcore.agents.lean_watcher import LeanWatcher
from dwcore.agents.pipeline import Batch, ContentStage, Stage, chain
from dwcore.agents.watcher import FileWatcher
from dwcore.detectors.policy import Policy
from dwcore.schemas.alert import Alert

if TYPE_CHECKING:  # imported where used: only the features a config turns on are loaded
    from dwcore.agents.canary import CanaryReadWatch
    from dwcore.agents.fastpath import FastPath

log = logging.getLogger(__name__)


def audit_stage(config: Config) -> Stage | None:
    from dwcore.agents.audit_auditd import AuditdParser
    from dwcore.agents.audit_follow import LogFollower
    from dwcore.agents.audit_join import AuditJoin, AuditSource
    from dwcore.agents.audit_samba import SambaParser

    a = config.audit
    sources = []
    if a.auditd_log:
        sources.append(AuditSource("auditd", LogFollower(a.auditd_log), AuditdParser()))
    if a.samba_log:
        sources.append(AuditSource("samba", LogFollower(a.samba_log),
                                   SambaParser(prefix=a.samba_prefix, shares=a.samba_shares)))
    if not sources:
        return None
    join = AuditJoin(sources, window_ms=a.window_ms, wait_ms=a.wait_ms)
    join.poll()  # open the logs now, at their end, so lines written from here on are seen
    return join


class AgentStages:
    """The stages of one agent process, plus the canary read watch and the fast path's outputs."""

    def __init__(self, config: Config, policy: Policy | None = None, *,
                 alert_sinks: list[Callable[[Alert], None]] | None = None) -> None:
        from dwcore.agents.canary import CanarySet, CanaryStage

        self.config = config
        self.stages: list[Stage] = []
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.canaries: CanarySet | None = None
        self.fastpath: FastPath | None = None
        self.read_watch: CanaryReadWatch | None = None
        join = audit_stage(config)
        if join is not None:
            self.stages.append(join)
        if config.canary.enabled:
            self.canaries = CanarySet(config.data_dir, grace_ms=config.canary.grace_ms)
            self.stages.append(CanaryStage(self.canaries))
        c = config.content
        if c.enabled:
            self.stages.append(ContentStage(ContentSampler(
                head=c.head_bytes, middle=c.middle_bytes, tail=c.tail_bytes,
                bytes_per_s=c.bytes_per_s, cache_bytes=c.cache_bytes)))
        if policy is not None and config.response.fastpath:
            self.stages.append(self._fastpath(policy, alert_sinks or []))

    def _fastpath(self, policy: Policy, extra: list[Callable[[Alert], None]]) -> Stage:
        from dwcore.agents.fastpath import FastPath
        from dwcore.agents.response import Hook, ResponseHooks
        from dwcore.sinks.jsonl import AlertJsonlWriter

        r = self.config.response
        data = Path(self.config.data_dir)
        writer = AlertJsonlWriter(r.alerts_jsonl or data / "agent-alerts.jsonl")
        self._closers.append(writer.close)
        sinks: list[Callable[[Alert], None]] = [writer.write]
        if r.hooks:
            hooks = ResponseHooks([Hook(h.min_severity, list(h.command), h.name) for h in r.hooks],
                                  r.audit_file or data / "responses.jsonl", dry_run=r.dry_run,
                                  timeout_s=r.timeout_s, allow_users=r.allow_users)
            self._closers.append(hooks.close)
            sinks.append(hooks.on_alert)
        fastpath = FastPath(policy, sinks + extra)
        self.fastpath = fastpath
        self._closers.insert(0, fastpath.close)  # evaluate what is queued before the outputs close
        return fastpath

    def emit_to(self, sink: Callable[[Batch], None]) -> Callable[[Batch], None]:
        run = chain(self.stages, sink)

        def locked(batch: Batch) -> None:
            with self._lock:
                run(batch)

        return locked

    def start_side_watches(self, device: str, emit: Callable[[Batch], None]) -> None:
        """Canary reads, and writes for the fast path (Linux): their own inotify instance on the
        canary files only."""
        if self.canaries is None or not self.config.canary.watch_reads:
            return
        from dwcore.agents.attribution import OwnerResolver
        from dwcore.agents.canary import CanaryReadWatch

        owners = OwnerResolver()

        def user_of(path: str) -> tuple[str, str]:
            o = owners.resolve(path)
            return o.user_name, o.user_uid

        # Touches go to the fast path the moment the kernel reports them (writes included), ahead
        # of the watcher's batches and of the stage lock a large batch may hold.
        early = self.fastpath.early if self.fastpath is not None else None
        read_watch = CanaryReadWatch(self.canaries, device, emit, user_of=user_of, early=early)
        self.read_watch = read_watch
        read_watch.start()
        self._closers.insert(0, read_watch.stop)

    def close(self) -> None:
        for close in self._closers:
            try:
                close()
            except Exception:
                log.exception("agent_stage_close_failed")


def watcher_class(backend: str) -> type[FileWatcher] | type[LeanWatcher]:
    """capture.backend: the lean inotify reader on Linux (auto), else watchdog."""
    if backend not in ("auto", "inotify", "watchdog"):
        raise ValueError(f"capture.backend must be auto, inotify or watchdog, not {backend!r}")
    if backend == "inotify" or (backend == "auto" and sys.platform.startswith("linux")):
        return LeanWatcher
    return FileWatcher


def build_stages(config: Config) -> list[Stage]:
    """The stages without the fast path (the embedded mode detects on the bus already)."""
    return AgentStages(config).stages
