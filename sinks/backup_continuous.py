"""Continuous mode: upload what changed, driven by the access events of the stream; and the
scheduled mode: a full incremental pass every N seconds. Both stop writing the moment the gate
closes, and after a recorded resume the continuous mode rescans (changes made during the halt
were not uploaded)."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

from dwcore.logfmt import kv
from dwcore.schemas.event import AccessEvent
from dwcore.schemas.paths import name_bytes
from dwcore.sinks.backup_gate import Gate
from dwcore.sinks.backup_uploader import Stats, Uploader, scan_tree

log = logging.getLogger(__name__)


class ContinuousBackup:
    def __init__(self, uploaders: Sequence[Uploader], gate: Gate, debounce_s: float = 0.2,
                 checkpoint_s: float = 60.0) -> None:
        self.uploaders = list(uploaders)
        self.gate = gate
        self.debounce_s = debounce_s
        self.checkpoint_s = checkpoint_s
        self.stats = Stats()
        self._dirty: dict[int, set[bytes]] = {}
        self._rescan = True  # the first pass is a full incremental scan
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cycles = 0
        self._busy = False

    def start(self) -> None:
        for up in self.uploaders:
            if not self.gate.closed:
                up.start_run("continuous")
        self.gate.watch_marker(on_reopen=self.request_rescan)
        self._thread = threading.Thread(target=self._loop, name="dw-backup-continuous", daemon=True)
        self._thread.start()

    def request_rescan(self) -> None:
        with self._cond:
            self._rescan = True
            self._cond.notify_all()

    def on_events(self, events: Sequence[AccessEvent]) -> None:
        """Called with each batch of events (after detection ran on it): mark paths dirty."""
        marked = False
        for ev in events:
            for text in (ev.file_path, ev.file_new_path):
                if not text:
                    continue
                try:
                    raw = name_bytes(text, ev.names_escaped)
                except ValueError:
                    continue
                for i, up in enumerate(self.uploaders):
                    root = up.root
                    if raw.startswith(root + b"/"):
                        self._dirty.setdefault(i, set()).add(raw[len(root) + 1:])
                        marked = True
        if marked:
            with self._cond:
                self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return self.gate.closed or (not self._dirty and not self._rescan and not self._busy)

    def _loop(self) -> None:
        last_checkpoint = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                ready = bool(self._dirty or self._rescan) and not self.gate.closed
                if not ready:
                    self._cond.wait(0.5)
                    ready = bool(self._dirty or self._rescan) and not self.gate.closed and not self._stop.is_set()
                self._busy = ready
            if ready:
                time.sleep(self.debounce_s)  # let a burst of writes to one file settle
                try:
                    self._cycle()
                except Exception:
                    log.exception("backup_cycle_failed")
                with self._cond:
                    self._busy = False
            if time.monotonic() - last_checkpoint >= self.checkpoint_s and not self.gate.closed:
                for up in self.uploaders:
                    up.finish("checkpoint", final=False)
                last_checkpoint = time.monotonic()

    def _cycle(self) -> None:
        with self._cond:
            dirty, self._dirty = self._dirty, {}
            rescan, self._rescan = self._rescan, False
        for i, up in enumerate(self.uploaders):
            if not up.run_id and not self.gate.closed:
                up.start_run("continuous")
            rels: set[bytes] = set()
            if rescan:
                rels.update(scan_tree(up.root, up.exclude))
            for rel in dirty.get(i, ()):
                full = os.path.join(up.root, rel)
                if os.path.isdir(full) and not os.path.islink(full):  # a directory renamed in
                    rels.update(os.path.join(rel, r) for r in scan_tree(full, up.exclude))
                else:
                    rels.add(rel)
            if not rels:
                continue
            st = up.backup_files(sorted(rels))
            self.stats.uploaded += st.uploaded
            self.stats.bytes_uploaded += st.bytes_uploaded
            self.stats.unchanged += st.unchanged
            if st.halted:
                self.stats.halted = True
                return
        self.cycles += 1

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Upload what is still dirty (unless halted), then write each run's final manifest."""
        if not self.gate.closed:
            self.wait_idle(30)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread:
            self._thread.join(60)
        self.gate.stop_watching()
        for up in self.uploaders:
            if up.run_id:
                up.finish("complete")


def run_scheduled(uploader: Uploader, every_s: float, stop: threading.Event) -> int:
    """A full incremental pass every every_s seconds until stop is set or the gate closes."""
    passes = 0
    while not stop.is_set() and not uploader.gate.closed:
        uploader.start_run("scheduled")
        stats = uploader.backup_tree()
        uploader.finish("halted" if stats.halted else "complete")
        passes += 1
        log.info("backup_scheduled_pass %s", kv(n=passes, uploaded=stats.uploaded, unchanged=stats.unchanged))
        stop.wait(every_s)
    return passes
