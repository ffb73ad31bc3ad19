"""librdkafka consumer settings shared by every dataward consumer group (sink, alert delivery)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dwcore.kafkalog import client_hooks


def consumer_config(client_config: Mapping[str, str], group_id: str) -> dict[str, Any]:
    """Manual offset storing and commits (only after the work is done), earliest start, and
    cooperative rebalancing so that a joining member does not stop the others."""
    return {
        **client_hooks(),  # dead brokers: one rate-limited line, not librdkafka's flood
        **client_config,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
    }
