"""The distributed sink's counters and where its time goes, as one ``sink_stats`` log line."""
from __future__ import annotations

import time

import msgspec

from dwcore.logfmt import kv


class SinkCounters(msgspec.Struct):
    received: int = 0
    inserted: dict[str, int] = msgspec.field(default_factory=dict)  # rows per table
    deadlettered: int = 0  # of which: failed to decode here, or refused by the store
    commits: int = 0
    retries: int = 0
    errors: int = 0
    disk_full: int = 0  # episodes of the store's disk being full (each raised one alarm)
    # Where the time goes, per stage: consume (Kafka), decode (validate, group, replay guard),
    # insert (columns, wire encoding and the engine), commit, seal (custody blocks).
    seconds: dict[str, float] = msgspec.field(default_factory=dict)

    def timed(self, stage: str, since: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - since

    def inserted_into(self, table: str) -> int:
        return self.inserted.get(table, 0)

    def line(self) -> str:
        fields: dict[str, int] = {"received": self.received}
        fields.update({f"inserted_{table}": n for table, n in sorted(self.inserted.items())})
        fields.update(deadlettered=self.deadlettered, commits=self.commits, retries=self.retries, errors=self.errors,
                      disk_full=self.disk_full)
        line = kv(**fields)
        if self.seconds:
            line += " " + kv(**{f"s_{stage}": f"{s:.2f}" for stage, s in sorted(self.seconds.items())})
        return line
