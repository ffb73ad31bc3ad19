"""Alerts as JSON Lines: one Alert per line, every field, on disk before ``write`` returns.

fsync per alert is affordable because alerts are rare, and a SIEM tailing the file or an analyst
after a crash must see every alert that was raised. ``"-"`` writes to stdout (no fsync).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import msgspec

from dwcore.schemas.alert import Alert

log = logging.getLogger(__name__)

# omit_defaults is off for Alert, so every field is written even when empty.
_encoder = msgspec.json.Encoder()


class AlertJsonlWriter:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._stdout = self.path == "-"
        self._file: BinaryIO
        if self._stdout:
            self._file = sys.stdout.buffer
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Alerts name users and files: owner-only, whatever the umask or an older file's mode.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            self._file = os.fdopen(fd, "ab")
        self.written = 0

    def write(self, alert: Alert) -> None:
        self.write_many((alert,))

    def write_many(self, alerts: Iterable[Alert]) -> None:
        lines = b"".join(_encoder.encode(a) + b"\n" for a in alerts)
        if not lines:
            return
        with self._lock:
            self._file.write(lines)
            self._file.flush()
            if not self._stdout:
                os.fsync(self._file.fileno())
            self.written += lines.count(b"\n")

    def close(self) -> None:
        with self._lock:
            if not self._stdout and not self._file.closed:
                self._file.close()

    def __enter__(self) -> AlertJsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
