"""Builds the agent's enrichment stages from the typed config (wiring only)."""
from __future__ import annotations

from dataward.config import Config
from dwcore.agents.content import ContentSampler
from dwcore.agents.pipeline import ContentStage, Stage


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


def build_stages(config: Config) -> list[Stage]:
    """The stages every watcher batch passes through before it is published, in order."""
    stages: list[Stage] = []
    join = audit_stage(config)
    if join is not None:
        stages.append(join)
    c = config.content
    if c.enabled:
        stages.append(ContentStage(ContentSampler(
            head=c.head_bytes, middle=c.middle_bytes, tail=c.tail_bytes,
            bytes_per_s=c.bytes_per_s, cache_bytes=c.cache_bytes)))
    return stages
