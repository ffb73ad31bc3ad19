"""The backup's local journal: what was uploaded, what is in flight, halts and resumes.

SQLite in the data dir (WAL, synchronous=FULL): a crash at any point leaves a consistent state a
rerun continues from. Intents are written before an upload starts, so a rerun can tell "uploaded,
but the process died before it recorded the version" (adopt the object, upload nothing) from
"never uploaded". Several processes may share it (a controller halting a `backup run`); the halt
is also a marker file so the uploader's per-commit check is one stat, not a query.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import msgspec

from dwcore.sinks.backup_model import Incident, ManifestEntry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  bucket TEXT, key TEXT, path TEXT, escaped INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
  ino INTEGER, sha256 TEXT, version_id TEXT, uploaded_at INTEGER, run_id TEXT, PRIMARY KEY (bucket, key));
CREATE TABLE IF NOT EXISTS versions (
  bucket TEXT, key TEXT, version_id TEXT, path TEXT, escaped INTEGER, size INTEGER, sha256 TEXT,
  uploaded_at INTEGER, run_id TEXT, suspect TEXT DEFAULT '', PRIMARY KEY (bucket, key, version_id));
CREATE INDEX IF NOT EXISTS versions_time ON versions (uploaded_at);
CREATE TABLE IF NOT EXISTS pending (
  bucket TEXT, key TEXT, sha256 TEXT, size INTEGER, upload_id TEXT, parts TEXT, started_at INTEGER,
  PRIMARY KEY (bucket, key));
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, bucket TEXT, prefix TEXT, root TEXT, mode TEXT, started_at INTEGER,
  finished_at INTEGER, status TEXT, files_uploaded INTEGER DEFAULT 0, bytes_uploaded INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS incidents (
  uid TEXT PRIMARY KEY, record TEXT, resumed_at INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS audit (time INTEGER, action TEXT, incident TEXT, who TEXT, detail TEXT);
"""

_incident_dec = msgspec.json.Decoder(Incident)
_json = msgspec.json


class Journal:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.marker = self.dir / "HALTED"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.dir / "journal.sqlite", check_same_thread=False, timeout=30,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: Iterable[object] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # -- files and versions ---------------------------------------------------------------------

    def file_state(self, bucket: str, key: str) -> tuple | None:
        rows = self._exec("SELECT size, mtime_ns, ctime_ns, ino, sha256, version_id FROM files "
                          "WHERE bucket=? AND key=?", (bucket, key))
        return rows[0] if rows else None

    def touch(self, bucket: str, key: str, stat: os.stat_result) -> None:
        """Content unchanged (same hash) but the stat moved: remember the new stat."""
        self._exec("UPDATE files SET mtime_ns=?, ctime_ns=?, ino=? WHERE bucket=? AND key=?",
                   (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, bucket, key))

    def record_upload(self, bucket: str, entry: ManifestEntry, stat: os.stat_result | None, run_id: str) -> None:
        """The version exists in the bucket: one transaction for current state, history and intent."""
        st = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino) if stat is not None else (0, 0, 0)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           (bucket, entry.key, entry.path, int(entry.escaped), entry.size, *st, entry.sha256,
                            entry.version_id, entry.uploaded_at, run_id))
                db.execute("INSERT OR IGNORE INTO versions (bucket, key, version_id, path, escaped, size, sha256,"
                           " uploaded_at, run_id) VALUES (?,?,?,?,?,?,?,?,?)",
                           (bucket, entry.key, entry.version_id, entry.path, int(entry.escaped), entry.size,
                            entry.sha256, entry.uploaded_at, run_id))
                db.execute("DELETE FROM pending WHERE bucket=? AND key=?", (bucket, entry.key))
                db.execute("UPDATE runs SET files_uploaded = files_uploaded + 1, bytes_uploaded = bytes_uploaded + ?"
                           " WHERE run_id=?", (entry.size, run_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def current_entries(self, bucket: str, prefix: str) -> list[ManifestEntry]:
        rows = self._exec("SELECT key, path, escaped, size, sha256, version_id, uploaded_at FROM files "
                          "WHERE bucket=? AND substr(key, 1, ?) = ? ORDER BY key", (bucket, len(prefix), prefix))
        return [ManifestEntry(key=k, path=p, escaped=bool(e), size=s, sha256=h, version_id=v, uploaded_at=t)
                for k, p, e, s, h, v, t in rows]

    def run_keys(self, run_id: str) -> list[tuple]:
        return self._exec("SELECT key FROM versions WHERE run_id=?", (run_id,))

    def version_times(self, bucket: str) -> dict[str, tuple[int, str]]:
        """version_id -> (uploaded_at, suspect incident or '') for every version dataward wrote."""
        rows = self._exec("SELECT version_id, uploaded_at, suspect FROM versions WHERE bucket=?", (bucket,))
        return {v: (t, s) for v, t, s in rows}

    def versions_since(self, since_ms: int) -> list[tuple[str, str, str]]:
        """(bucket, key, version_id) of every version committed at or after since_ms."""
        return self._exec("SELECT bucket, key, version_id FROM versions WHERE uploaded_at >= ?", (since_ms,))

    def flag_suspect(self, since_ms: int, incident: str) -> list[tuple]:
        """Flag every version committed at or after since_ms; returns the flagged rows."""
        with self._lock:
            self._db.execute("UPDATE versions SET suspect=? WHERE uploaded_at >= ? AND suspect=''",
                             (incident, since_ms))
            return self._db.execute(
                "SELECT bucket, key, version_id, run_id, path, size, sha256, uploaded_at FROM versions"
                " WHERE suspect=?", (incident,)).fetchall()

    # -- intents (crash safety) -----------------------------------------------------------------

    def begin(self, bucket: str, key: str, sha256: str, size: int, now_ms: int) -> tuple | None:
        """Record an intent; returns the previous pending row (upload_id, parts, sha256) if any."""
        with self._lock:
            rows = self._db.execute("SELECT upload_id, parts, sha256, size FROM pending WHERE bucket=? AND key=?",
                                    (bucket, key)).fetchall()
            if not rows:
                self._db.execute("INSERT INTO pending VALUES (?,?,?,?,?,?,?)",
                                 (bucket, key, sha256, size, "", "[]", now_ms))
            return rows[0] if rows else None

    def set_pending(self, bucket: str, key: str, sha256: str, size: int, upload_id: str,
                    parts: list[dict], now_ms: int) -> None:
        self._exec("INSERT OR REPLACE INTO pending VALUES (?,?,?,?,?,?,?)",
                   (bucket, key, sha256, size, upload_id, json.dumps(parts), now_ms))

    def drop_pending(self, bucket: str, key: str) -> None:
        self._exec("DELETE FROM pending WHERE bucket=? AND key=?", (bucket, key))

    def pending(self) -> list[tuple]:
        return self._exec("SELECT bucket, key, sha256, size, upload_id, parts FROM pending")

    # -- runs -----------------------------------------------------------------------------------

    def open_run(self, bucket: str, prefix: str, root: str, mode: str) -> str | None:
        """The run id of an interrupted run of the same tree (crash), to continue it."""
        rows = self._exec("SELECT run_id FROM runs WHERE bucket=? AND prefix=? AND root=? AND status='running'"
                          " ORDER BY started_at DESC LIMIT 1", (bucket, prefix, root))
        return rows[0][0] if rows else None

    def start_run(self, run_id: str, bucket: str, prefix: str, root: str, mode: str, now_ms: int) -> None:
        self._exec("INSERT OR IGNORE INTO runs (run_id, bucket, prefix, root, mode, started_at, finished_at, status)"
                   " VALUES (?,?,?,?,?,?,0,'running')", (run_id, bucket, prefix, root, mode, now_ms))

    def finish_run(self, run_id: str, status: str, now_ms: int) -> None:
        self._exec("UPDATE runs SET status=?, finished_at=? WHERE run_id=?", (status, now_ms, run_id))

    def run(self, run_id: str) -> tuple | None:
        rows = self._exec("SELECT run_id, bucket, prefix, root, mode, started_at, finished_at, status,"
                          " files_uploaded, bytes_uploaded FROM runs WHERE run_id=?", (run_id,))
        return rows[0] if rows else None

    def runs(self, limit: int = 10) -> list[tuple]:
        return self._exec("SELECT run_id, bucket, prefix, root, mode, started_at, finished_at, status,"
                          " files_uploaded, bytes_uploaded FROM runs ORDER BY started_at DESC LIMIT ?", (limit,))

    # -- halts ----------------------------------------------------------------------------------

    def halted_marker(self) -> bool:
        return self.marker.exists()

    def write_marker(self, incident_uid: str) -> None:
        """Durable before anything else: a restart a moment later must find the halt."""
        tmp = self.marker.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(incident_uid + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.marker)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def save_incident(self, incident: Incident) -> None:
        self._exec("INSERT OR REPLACE INTO incidents VALUES (?,?,?)",
                   (incident.uid, _json.encode(incident).decode(), incident.resumed_at))

    def incident(self, uid: str) -> Incident | None:
        rows = self._exec("SELECT record FROM incidents WHERE uid=?", (uid,))
        return _incident_dec.decode(rows[0][0]) if rows else None

    def incidents(self) -> list[Incident]:
        return [_incident_dec.decode(r[0]) for r in self._exec("SELECT record FROM incidents")]

    def open_incidents(self) -> list[Incident]:
        return [i for i in self.incidents() if not i.resumed_at]

    def clear_marker_if_none_open(self) -> bool:
        if self.open_incidents():
            return False
        self.marker.unlink(missing_ok=True)
        return True

    def audit(self, time_ms: int, action: str, incident: str, who: str, detail: dict) -> None:
        self._exec("INSERT INTO audit VALUES (?,?,?,?,?)", (time_ms, action, incident, who, json.dumps(detail)))

    def audit_rows(self, limit: int = 20) -> list[tuple]:
        return self._exec("SELECT time, action, incident, who, detail FROM audit ORDER BY time DESC LIMIT ?",
                          (limit,))
