"""The backup's rows in ClickHouse (backup_runs, backup_manifest, backup_audit) through the Store.

Recording never stops a backup or a halt: the journal and the bucket manifest are the truth; a
failed insert is logged with its kind and the rows are appended to a JSONL file for replay."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import msgspec

from dwcore.logfmt import kv
from dwcore.schemas.ddl import (
    BACKUP_AUDIT_COLUMNS,
    BACKUP_AUDIT_TABLE,
    BACKUP_MANIFEST_COLUMNS,
    BACKUP_MANIFEST_TABLE,
    BACKUP_RUN_COLUMNS,
    BACKUP_RUNS_TABLE,
)
from dwcore.sinks.backup_controller import Recorder
from dwcore.sinks.backup_model import AuditRow, ManifestRow, RunRow
from dwcore.sinks.errors import StoreFailure
from dwcore.sinks.store_writer import StoreWriter

log = logging.getLogger(__name__)


class StoreRecorder(Recorder):
    def __init__(self, store: StoreWriter | None, park_dir: str | Path) -> None:
        self.store = store
        self.park_dir = Path(park_dir)

    def _put(self, table: str, columns: tuple[tuple[str, str], ...], rows: Sequence[msgspec.Struct]) -> None:
        if not rows:
            return
        if self.store is not None:
            try:
                self.store.insert(table, columns, rows)
                return
            except StoreFailure as exc:
                log.error("backup_store_insert_failed %s", kv(
                    table=table, rows=len(rows), retriable=exc.retriable, reason=str(exc)[:300]))
        self.park_dir.mkdir(parents=True, exist_ok=True)
        with open(self.park_dir / f"{table}.jsonl", "ab") as fh:
            fh.write(b"".join(msgspec.json.encode(r) + b"\n" for r in rows))

    def runs(self, rows: Sequence[RunRow]) -> None:
        self._put(BACKUP_RUNS_TABLE, BACKUP_RUN_COLUMNS, rows)

    def manifest(self, rows: Sequence[ManifestRow]) -> None:
        self._put(BACKUP_MANIFEST_TABLE, BACKUP_MANIFEST_COLUMNS, rows)

    def audit(self, rows: Sequence[AuditRow]) -> None:
        self._put(BACKUP_AUDIT_TABLE, BACKUP_AUDIT_COLUMNS, rows)
