"""Builds the agent's enrichment stages from the typed config (wiring only)."""
from __future__ import annotations

from dataward.config import Config
from dwcore.agents.content import ContentSampler
from dwcore.agents.pipeline import ContentStage, Stage


def build_stages(config: Config) -> list[Stage]:
    """The stages every watcher batch passes through before it is published, in order."""
    stages: list[Stage] = []
    c = config.content
    if c.enabled:
        stages.append(ContentStage(ContentSampler(
            head=c.head_bytes, middle=c.middle_bytes, tail=c.tail_bytes,
            bytes_per_s=c.bytes_per_s, cache_bytes=c.cache_bytes)))
    return stages
