"""`dataward run --backup-bucket`: the continuous backup inside the embedded pipeline."""
from __future__ import annotations

from rich.markup import escape

from dataward.cli_backup import print_halt
from dataward.cli_common import err


class EmbeddedBackup:
    """`dataward run --backup-bucket`: the continuous backup of the watched roots, halted in-process
    by the pipeline's alerts (dataward/backup_hook.py's BackupHook)."""

    def __init__(self, cfg, roots: list[str]) -> None:
        from dataward.backup_setup import BackupParts
        from dwcore.sinks.backup_record import StoreRecorder

        self.recorder = StoreRecorder(None, cfg.backup_dir / "pending")
        self.parts = BackupParts(cfg, recorder=self.recorder)
        self.continuous = self.parts.continuous(roots)

    def start(self, store) -> None:
        self.recorder.store = store.writer if store is not None else None
        if self.parts.gate.closed:
            print_halt(self.parts)
        self.continuous.start()

    def on_alert(self, alert) -> None:
        incident = self.parts.controller.on_alert(alert)
        if incident is not None:
            err.print(f"[bold red]BACKUP HALTED[/bold red] incident {escape(incident.uid)}: nothing more is "
                      f"written to s3://{escape(self.parts.bucket)} (alert->halt "
                      f"{self.parts.controller.latencies_ms[-1]:.1f} ms). Resume after review: "
                      f"dataward backup resume --incident {escape(incident.uid)}")

    def on_events(self, events) -> None:
        self.continuous.on_events(events)

    def stop(self) -> None:
        self.continuous.stop()
        self.parts.controller.wait_after_halt(30)
        self.parts.close()
