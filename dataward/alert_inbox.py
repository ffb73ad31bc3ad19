"""Alerts other dataward commands raise about a running `dataward run` (a failed self-test), handed
to it through ``<data-dir>/alert-inbox/`` because the embedded store belongs to the run and its
query endpoint is read-only.

A command drops one JSON file per alert (written beside, then renamed: the run never reads half a
file); the run stores each in its ``alerts`` table and removes the file only once the insert
succeeded, so a failure raised while the run is down is stored when it starts again. The inbox is in
the private data dir, but a file there is still read as untrusted: size-capped, decoded strictly,
and set aside as ``*.bad`` when it is not an alert.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from dwcore.logfmt import kv
from dwcore.schemas.alert import Alert
from dwcore.sinks.errors import StoreFailure

log = logging.getLogger(__name__)

INBOX_DIR = "alert-inbox"
MAX_FILE_BYTES = 1 << 20
POLL_S = 1.0
_decoder = msgspec.json.Decoder(Alert)


def inbox_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / INBOX_DIR


def drop(data_dir: str | os.PathLike[str], alert: Alert) -> Path:
    """Leave ``alert`` for the run that owns ``data_dir`` (it need not be running now)."""
    directory = inbox_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{alert.uid}-v{alert.version}.json"
    tmp = directory / f".{path.name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(msgspec.json.encode(alert))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _read(path: Path) -> Alert | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return _decoder.decode(path.read_bytes())
    except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("alert_inbox_refused %s", kv(file=path.name, error=str(exc)[:200], action="renamed_bad"))
        try:
            path.rename(path.with_name(path.name + ".bad"))
        except OSError:
            pass
        return None


def ingest(directory: Path, store: Callable[[Sequence[Alert]], object]) -> int:
    """Stores every alert waiting in ``directory``; returns how many. Files stay until stored."""
    try:
        paths = sorted(p for p in directory.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return 0
    found = [(p, a) for p in paths if (a := _read(p)) is not None]
    if not found:
        return 0
    store([a for _, a in found])
    for path, alert in found:
        path.unlink(missing_ok=True)
        log.info("alert_inbox_stored %s", kv(uid=alert.uid, rule=alert.rule, severity=alert.severity))
    return len(found)


class AlertInbox:
    """Polls the inbox from its own thread and stores what it finds (at once on start)."""

    def __init__(self, data_dir: str | os.PathLike[str], store: Callable[[Sequence[Alert]], object],
                 poll_s: float = POLL_S) -> None:
        self.directory = inbox_dir(data_dir)
        self._store = store
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dw-alert-inbox", daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                ingest(self.directory, self._store)
            except StoreFailure as exc:  # kept in the inbox; the next poll retries
                log.warning("alert_inbox_not_stored %s", kv(error=str(exc)[:200], action="retry"))
            except Exception:
                log.exception("alert_inbox_failed")
            if self._stop.wait(self._poll_s):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
