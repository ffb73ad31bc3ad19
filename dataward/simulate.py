"""Harmless simulated attacks that prove the pipeline end to end.

A drill (``dataward simulate``, ``dataward selftest``) writes only inside a fresh directory
``.dataward-drill-<run id>`` in a watched directory, waits until the store holds the drill's alert,
and removes its directory afterwards, also on failure, Ctrl-C or SIGTERM. Its alerts carry
``drill=True`` (see detectors/drill.py): stored and shown, never paged; each run is an incident of
its own, so a second drill inside the first one's cooldown proves detection again.

``simulate_rename``/``simulate_delete`` (no drill directory, alerts page as usual) are what the
end-to-end tests use to prove that a real burst reaches people.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress

from dataward.config import Config
from dwcore.detectors.drill import DRILL_DIR_PREFIX, drill_dir_name
from dwcore.logfmt import kv
from dwcore.sinks.errors import StoreError

log = logging.getLogger(__name__)

STALE_DRILL_S = 3600.0  # a drill directory this old was left by a killed run: swept by the next one


def new_run_id() -> str:
    return secrets.token_hex(8)


def simulate_rename(directory: Path, files: int, extension: str = ".locked", show_progress: bool = True,
                    target: Path | None = None) -> int:
    """Create ``files`` files in ``target`` (default DIR/dataward-selftest) and rename each to ``extension``."""
    target = target or directory / "dataward-selftest"
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = target / f"sample-{i:05d}.csv"
        path.write_bytes(os.urandom(256))
        paths.append(path)
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"renaming to *{extension}", total=files)
        for path in paths:
            path.rename(path.with_name(path.name + extension))
            progress.advance(task)
    return files


def simulate_delete(directory: Path, files: int, show_progress: bool = True, prepare: bool = False,
                    target: Path | None = None) -> int:
    """Delete the self-test's victim files; with ``prepare``, only create them.

    Deleting files the same user created minutes earlier is churn (build output, temp files),
    which dataward deliberately does not alert on; the bulk-delete self-test therefore deletes
    files that were prepared earlier (``prepare`` once, then delete after ``settings.churn_s``, or
    on a dataward started after the preparation). Returns how many files were created or deleted.
    """
    target = target or directory / "dataward-selftest"
    target.mkdir(parents=True, exist_ok=True)
    if prepare:
        for i in range(files):
            (target / f"victim-{i:05d}.bin").write_bytes(b"x" * 64)
        return files
    paths = sorted(target.glob("victim-*.bin"))[:files]
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("deleting", total=len(paths))
        for path in paths:
            path.unlink()
            progress.advance(task)
    return len(paths)


# -- drills ------------------------------------------------------------------------------------


class NoStore(RuntimeError):
    """Nothing serves the store the drill would read its alert from."""


@dataclass(frozen=True)
class DrillAlert:
    uid: str
    rule: str
    severity: str
    user: str
    file_count: int
    detected_at: int  # epoch ms


def drill_dirs(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.name.startswith(DRILL_DIR_PREFIX) and p.is_dir())
    except OSError:
        return []


def sweep_stale(directory: Path, now: float | None = None, keep_prepared: bool = True) -> list[Path]:
    """Remove drill directories a killed run left behind (older than an hour); prepared delete
    drills (victims waiting to become long-lived) are kept."""
    now = time.time() if now is None else now
    removed = []
    for path in drill_dirs(directory):
        try:
            old = now - path.stat().st_mtime > STALE_DRILL_S
        except OSError:
            continue
        if old and not (keep_prepared and any(path.glob("victim-*"))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (systemd, a timeout) unwinds like Ctrl-C, so the drill directory is removed."""
    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: the caller owns signals
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def removing(path: Path, keep: bool = False) -> Iterator[Path]:
    """Yield ``path``; remove it afterwards whatever happens (error, Ctrl-C, SIGTERM) unless ``keep``."""
    with _sigterm_unwinds():
        try:
            yield path
        finally:
            if not keep:
                shutil.rmtree(path, ignore_errors=True)
                log.info("drill_removed %s", kv(path=path, left=path.exists()))


def drill_directory(directory: Path, run_id: str, keep: bool = False):
    """``DIR/.dataward-drill-<run_id>``, created fresh (a context manager that removes it)."""
    path = directory / drill_dir_name(run_id)
    path.mkdir()
    return removing(path, keep)


class DrillStore:
    """Reads drill alerts from the store the running pipeline writes: a ClickHouse server, or the
    query endpoint of the process that owns the chDB directory (never the directory itself: a
    drill against a store nobody writes could only time out)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def query(self, sql: str, params: dict[str, Any]) -> list[list[Any]]:
        from dwcore.sinks.query_client import endpoint_url, run_query

        if self.cfg.store_dsn.startswith("chdb://") and endpoint_url(self.cfg.query_addr_file) is None:
            raise NoStore(f"nothing serves the store in {self.cfg.data_dir}: start `dataward run` (or the "
                          "ClickHouse sink) with this data dir, or point --data-dir/--config at it")
        result = run_query(sql, params, dsn=self.cfg.store_dsn, database=self.cfg.store.database,
                           addr_file=self.cfg.query_addr_file)
        return [list(r) for r in result.rows]

    def check(self) -> None:
        self.query("SELECT 1", {})

    def alert(self, run_id: str) -> DrillAlert | None:
        rows = self.query(
            "SELECT uid, rule, severity, user, file_count, toUnixTimestamp64Milli(detected_at) FROM alerts "
            "WHERE drill AND arrayExists(p -> position(p, {marker:String}) > 0, paths) "
            "ORDER BY detected_at, version LIMIT 1",
            {"marker": f"/{drill_dir_name(run_id)}/"})
        if not rows:
            return None
        uid, rule, severity, user, files, detected = rows[0]
        return DrillAlert(str(uid), str(rule), str(severity), str(user), int(files), int(detected))

    def events(self, run_id: str) -> int:
        rows = self.query("SELECT count() FROM events WHERE position(file_path, {marker:String}) > 0",
                          {"marker": f"/{drill_dir_name(run_id)}/"})
        return int(rows[0][0]) if rows else 0


def poll(check: Callable[[], Any], timeout_s: float, interval_s: float = 0.25) -> Any:
    """``check()`` until it returns something truthy or the time is up (then None). Store errors
    while polling count as "not yet": the pipeline may be restarting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = check()
        except (StoreError, NoStore) as exc:
            log.debug("drill_poll_failed %s", kv(error=exc))
            found = None
        if found:
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)
