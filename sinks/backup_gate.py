"""The gate every write to the bucket passes: closed by a halt, never reopened by the uploader.

A *commit* is a request that makes a version appear (PutObject, CompleteMultipartUpload). It may
start only while the gate is open, and a halt waits for the commits already in flight, so once
``close()`` returns no version can appear any more. Multipart uploads in progress are aborted at
once (their parts can never become an object). Another process halts us through the journal's
marker file, which a poll thread watches.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dwcore.logfmt import kv
from dwcore.sinks.backup_model import Halted

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, marker: Path | None = None, poll_s: float = 0.05) -> None:
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._commits = 0
        self._multipart: dict[str, tuple[str, str, Callable[[], None]]] = {}  # upload_id -> (bucket, key, abort)
        self.marker = marker
        self.reason = ""
        self.aborted = 0
        self._poll_s = poll_s
        self._poller: threading.Thread | None = None
        self._stop_poll = threading.Event()
        if marker is not None and marker.exists():
            self._closed.set()
            self.reason = "halt persisted: " + marker.read_text().strip()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def check(self) -> None:
        if self._closed.is_set():
            raise Halted(self.reason)
        if self.marker is not None and self.marker.exists():
            self.close("halt marker " + str(self.marker))
            raise Halted(self.reason)

    @contextlib.contextmanager
    def commit(self) -> Iterator[None]:
        """Wrap the one request that creates a version, and recording it in the journal."""
        with self._cond:
            self.check()
            self._commits += 1
        try:
            yield
        finally:
            with self._cond:
                self._commits -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def multipart(self, upload_id: str, bucket: str, key: str, abort: Callable[[], None]) -> Iterator[None]:
        with self._cond:
            self.check()
            self._multipart[upload_id] = (bucket, key, abort)
        try:
            yield
        finally:
            with self._cond:
                self._multipart.pop(upload_id, None)

    def close(self, reason: str, wait_s: float = 30.0) -> int:
        """Halt: no new commit starts; abort multipart uploads; wait for commits in flight.
        Returns the number of multipart uploads aborted."""
        with self._cond:
            first = not self._closed.is_set()
            self._closed.set()
            if first:
                self.reason = reason
            uploads = list(self._multipart.items())
            self._multipart.clear()
        aborted = 0
        for upload_id, (bucket, key, abort) in uploads:
            try:
                abort()
                aborted += 1
                log.warning("multipart_aborted %s", kv(bucket=bucket, key=key, upload_id=upload_id))
            except Exception as exc:  # the upload may have just completed or never started
                log.error("multipart_abort_failed %s", kv(key=key, upload_id=upload_id, error=str(exc)[:200]))
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._commits and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            if self._commits:
                log.error("halt_wait_timeout %s", kv(commits_in_flight=self._commits))
        self.aborted += aborted
        return aborted

    def reopen(self) -> None:
        """Only after a recorded resume removed the marker (``Controller.resume``)."""
        with self._cond:
            if self.marker is not None and self.marker.exists():
                raise Halted("halt still persisted: " + self.marker.read_text().strip())
            self._closed.clear()
            self.reason = ""
        log.warning("backup_gate_reopened")

    def watch_marker(self, on_reopen: Callable[[], None] | None = None) -> None:
        """Poll the marker file: close within poll_s of another process's halt, and reopen once a
        resume (in any process) removed it."""
        if self.marker is None or self._poller is not None:
            return
        marker = self.marker

        def loop() -> None:
            while not self._stop_poll.is_set():
                present = marker.exists()
                if present and not self._closed.is_set():
                    self.close("halt marker " + str(marker))
                elif not present and self._closed.is_set():
                    self.reopen()
                    if on_reopen:
                        on_reopen()
                self._stop_poll.wait(self._poll_s)

        self._poller = threading.Thread(target=loop, name="dw-backup-gate", daemon=True)
        self._poller.start()

    def stop_watching(self) -> None:
        self._stop_poll.set()
        if self._poller is not None:
            self._poller.join(5)
            self._poller = None
