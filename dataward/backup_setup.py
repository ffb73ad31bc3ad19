"""Wiring for the backup controller: Config -> plain values for the parts in sinks/backup_*."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataward.config import Config
from dwcore.schemas.alert import Severity
from dwcore.sinks.backup_continuous import ContinuousBackup
from dwcore.sinks.backup_controller import Controller, HaltPolicy, Hooks, Recorder
from dwcore.sinks.backup_gate import Gate
from dwcore.sinks.backup_journal import Journal
from dwcore.sinks.backup_s3 import make_client
from dwcore.sinks.backup_uploader import MiB, Progress, Uploader, UploadSettings


class BackupParts:
    """Journal, gate, S3 client and controller for one process."""

    def __init__(self, cfg: Config, bucket: str = "", endpoint_url: str = "", recorder: Recorder | None = None) -> None:
        b = cfg.backup
        if b.halt_severity not in {s.value for s in Severity}:
            raise ValueError(f"backup.halt_severity must be low, medium, high or critical: {b.halt_severity!r}")
        self.cfg = cfg
        self.bucket = bucket or b.bucket
        self.endpoint_url = endpoint_url or b.endpoint_url
        self.journal = Journal(cfg.backup_dir)
        self.gate = Gate(self.journal.marker)
        self.s3: Any = make_client(self.endpoint_url, b.region, pool=b.concurrency + 8)
        self.recorder = recorder
        policy = HaltPolicy(min_severity=b.halt_severity, users=list(b.protect_users), paths=list(b.protect_paths),
                            halt_on_drill=b.halt_on_drill)
        hooks = Hooks(pause_command=b.pause_command, pause_url=b.pause_url, resume_command=b.resume_command,
                      resume_url=b.resume_url)
        self.controller = Controller(self.journal, self.gate, policy, s3=self.s3, recorder=recorder, hooks=hooks,
                                     tag_suspects=b.tag_suspects)

    def settings(self) -> UploadSettings:
        b = self.cfg.backup
        return UploadSettings(part_size=b.part_size_mb * MiB, multipart_threshold=b.multipart_threshold_mb * MiB,
                              concurrency=b.concurrency)

    def uploader(self, root: str, prefix: str, progress: Progress | None = None) -> Uploader:
        # Our own state must never be backed up (or read as a change) when it sits inside the tree.
        return Uploader(self.s3, self.journal, self.gate, self.bucket, prefix, root, self.settings(),
                        recorder=self.recorder, progress=progress,  # type: ignore[arg-type]
                        exclude=[os.path.abspath(self.cfg.data_dir)])

    def continuous(self, roots: Sequence[str]) -> ContinuousBackup:
        """One uploader per root; with several roots each goes under prefix/<basename>/."""
        prefix = self.cfg.backup.prefix
        ups = []
        for root in roots:
            p = prefix if len(roots) == 1 else f"{prefix.rstrip('/')}/{Path(root).name}/".lstrip("/")
            ups.append(self.uploader(root, p))
        return ContinuousBackup(ups, self.gate, self.cfg.backup.debounce_s, self.cfg.backup.checkpoint_s)

    def close(self) -> None:
        self.gate.stop_watching()
        self.journal.close()
