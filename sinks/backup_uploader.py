"""Incremental-forever, version-aware upload of one directory tree to a versioned bucket.

Per file: a stat that equals the journal's (size, mtime, ctime, inode) means unchanged; else the
content hash decides; only changed content is uploaded, small files with one PutObject, large
ones multipart. Every upload is an intent in the journal first, so after a crash the rerun
continues a multipart upload from its last part, or adopts an object that was committed but not
recorded, and never uploads the same content twice. Every commit passes the halt gate.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from dwcore.logfmt import kv
from dwcore.sinks.backup_gate import Gate
from dwcore.sinks.backup_journal import Journal
from dwcore.sinks.backup_model import (
    ESCAPED_META,
    MANIFEST_DIR,
    SHA_META,
    Halted,
    ManifestEntry,
    ManifestRow,
    RunManifest,
    RunRow,
)
from dwcore.sinks.backup_s3 import key_for, norm_prefix

log = logging.getLogger(__name__)

MiB = 1024 * 1024


class Progress(Protocol):
    def total(self, files: int, size: int) -> None: ...
    def advance(self, files: int, size: int) -> None: ...


class _NoProgress:
    def total(self, files: int, size: int) -> None:
        pass

    def advance(self, files: int, size: int) -> None:
        pass


class Recorder(Protocol):
    """Where runs and manifest rows go besides the journal and the bucket (ClickHouse)."""

    def runs(self, rows: Sequence[RunRow]) -> None: ...
    def manifest(self, rows: Sequence[ManifestRow]) -> None: ...


class UploadSettings(msgspec.Struct, frozen=True):
    part_size: int = 8 * MiB
    multipart_threshold: int = 8 * MiB
    concurrency: int = 4


@dataclass
class Stats:
    scanned: int = 0
    uploaded: int = 0
    unchanged: int = 0
    adopted: int = 0  # committed before a crash, recorded by the rerun without uploading
    bytes_uploaded: int = 0
    halted: bool = False
    errors: list[str] = field(default_factory=list)


def now_ms() -> int:
    return int(time.time() * 1000)


def _same_stat(state: tuple, st: os.stat_result) -> bool:
    size, mtime_ns, ctime_ns, ino = state[:4]
    return (size, mtime_ns, ctime_ns, ino) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def sha256_file(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def scan_tree(root: bytes, exclude: Iterable[bytes] = ()) -> list[bytes]:
    """Regular files under root as relative byte paths; symlinks are not followed."""
    excluded = {os.path.abspath(e) for e in exclude}
    out: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in excluded]
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(os.path.relpath(full, root))
    out.sort()
    return out


class Uploader:
    def __init__(self, s3: Any, journal: Journal, gate: Gate, bucket: str, prefix: str, root: str,
                 settings: UploadSettings = UploadSettings(), recorder: Recorder | None = None,
                 progress: Progress | None = None, exclude: Iterable[str] = (),
                 clock: Callable[[], int] = now_ms) -> None:
        self.s3, self.journal, self.gate = s3, journal, gate
        self.bucket, self.prefix = bucket, norm_prefix(prefix)
        self.root = os.fsencode(os.path.abspath(root))
        self.settings = settings
        self.recorder = recorder
        self.progress: Progress = progress or _NoProgress()
        self.exclude = [os.fsencode(os.path.abspath(e)) for e in exclude]
        self.clock = clock
        self.run_id = ""
        self.mode = "once"
        self.started_at = 0
        self.errors = 0
        self._present: list[bytes] | None = None  # the last full scan, for an exact manifest

    # -- runs -----------------------------------------------------------------------------------

    def start_run(self, mode: str = "once") -> str:
        """Continue an interrupted run of this tree (a crash) or start a new one."""
        self.gate.check()
        root = os.fsdecode(self.root)
        self.mode = mode
        self.run_id = self.journal.open_run(self.bucket, self.prefix, root, mode) or ""
        if self.run_id:
            log.warning("backup_run_resumed %s", kv(run_id=self.run_id, root=root))
        else:
            self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self.started_at = self.clock()
        self.journal.start_run(self.run_id, self.bucket, self.prefix, root, mode, self.started_at)
        return self.run_id

    def backup_tree(self) -> Stats:
        rels = scan_tree(self.root, self.exclude)
        self._present = rels
        return self.backup_files(rels, total=True)

    def backup_files(self, rels: Sequence[bytes], total: bool = False) -> Stats:
        stats = Stats(scanned=len(rels))
        if total:
            size = 0
            for rel in rels:
                try:
                    size += os.lstat(os.path.join(self.root, rel)).st_size
                except OSError:
                    pass
            self.progress.total(len(rels), size)
        rows: list[ManifestRow] = []
        with ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency),
                                thread_name_prefix="dw-backup-up") as pool:
            for rel, result in zip(rels, pool.map(self._one_safe, rels), strict=True):
                kind, entry = result
                if kind == "halted":
                    stats.halted = True
                elif kind == "error":
                    stats.errors.append(os.fsdecode(rel))
                    self.errors += 1
                elif kind in ("uploaded", "adopted") and entry is not None:
                    setattr(stats, kind, getattr(stats, kind) + 1)
                    stats.bytes_uploaded += entry.size if kind == "uploaded" else 0
                    rows.append(self._row(entry))
                elif kind == "unchanged":
                    stats.unchanged += 1
        if rows and self.recorder:
            self.recorder.manifest(rows)
        return stats

    def _row(self, e: ManifestEntry) -> ManifestRow:
        return ManifestRow(bucket=self.bucket, key=e.key, version_id=e.version_id, run_id=self.run_id, path=e.path,
                           size=e.size, sha256=e.sha256, uploaded_at=e.uploaded_at, suspect=False, incident="",
                           rev=e.uploaded_at)

    def _one_safe(self, rel: bytes) -> tuple[str, ManifestEntry | None]:
        try:
            return self._one(rel)
        except Halted:
            return "halted", None
        except Exception as exc:
            if self.gate.closed:  # an abort of our multipart upload surfaces as an S3 error
                return "halted", None
            log.error("backup_file_failed %s", kv(path=rel, error=str(exc)[:300]))
            return "error", None

    # -- one file -------------------------------------------------------------------------------

    def _one(self, rel: bytes) -> tuple[str, ManifestEntry | None]:
        self.gate.check()
        path = os.path.join(self.root, rel)
        if any(path == e or path.startswith(e + b"/") for e in self.exclude):
            return "gone", None  # our own data dir inside the tree: never a change to back up
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "gone", None
        if not os.path.isfile(path) or os.path.islink(path):
            return "gone", None
        key, text, escaped = key_for(self.prefix, rel)
        state = self.journal.file_state(self.bucket, key)
        if state is not None and _same_stat(state, st):
            self.progress.advance(1, st.st_size)
            return "unchanged", None
        small = st.st_size <= self.settings.multipart_threshold
        body = b""
        if small:
            with open(path, "rb") as fh:
                body = fh.read()
            sha = hashlib.sha256(body).hexdigest()
        else:
            sha = sha256_file(path)
        if state is not None and state[4] == sha:
            self.journal.touch(self.bucket, key, st)
            self.progress.advance(1, st.st_size)
            return "unchanged", None
        size = len(body) if small else st.st_size
        prev = self.journal.begin(self.bucket, key, sha, size, self.clock())
        adopted = self._adopt(key, text, escaped, sha, size, st, prev)
        if adopted is not None:
            self.progress.advance(1, size)
            return "adopted", adopted
        meta = {SHA_META: sha, ESCAPED_META: "1" if escaped else "0"}
        if small:
            with self.gate.commit():
                resp = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=meta)
                entry = self._entry(key, text, escaped, size, sha, resp["VersionId"])
                self.journal.record_upload(self.bucket, entry, st, self.run_id)
        else:
            entry = self._multipart(path, key, text, escaped, size, sha, meta, st, prev)
        self.progress.advance(1, size)
        return "uploaded", entry

    def _entry(self, key: str, text: str, escaped: bool, size: int, sha: str, version_id: str) -> ManifestEntry:
        return ManifestEntry(key=key, path=text, escaped=escaped, size=size, sha256=sha, version_id=version_id,
                             uploaded_at=self.clock(), uploaded_in_run=True)

    def _adopt(self, key: str, text: str, escaped: bool, sha: str, size: int, st: os.stat_result,
               prev: tuple | None) -> ManifestEntry | None:
        """An intent left by a crash whose single PUT did reach S3: record it, upload nothing."""
        if prev is None or prev[0] or prev[2] != sha:
            return None
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except Exception:
            return None
        if head.get("Metadata", {}).get(SHA_META) != sha or "VersionId" not in head:
            return None
        # S3's own time (second resolution, rounded up): conservative for suspect decisions.
        committed = int(head["LastModified"].timestamp() * 1000) + 999
        entry = ManifestEntry(key=key, path=text, escaped=escaped, size=size, sha256=sha,
                              version_id=head["VersionId"], uploaded_at=committed, uploaded_in_run=True)
        self.journal.record_upload(self.bucket, entry, st, self.run_id)
        log.warning("backup_adopted_after_crash %s", kv(key=key, version_id=head["VersionId"]))
        return entry

    def _multipart(self, path: bytes, key: str, text: str, escaped: bool, size: int, sha: str,
                   meta: dict[str, str], st: os.stat_result, prev: tuple | None) -> ManifestEntry:
        upload_id, parts = "", []
        if prev is not None and prev[0]:
            if prev[2] == sha and prev[3] == size:
                upload_id, parts = prev[0], json.loads(prev[1])
                log.warning("multipart_resumed %s", kv(key=key, upload_id=upload_id, parts_done=len(parts)))
            else:  # the file changed since the crash: that upload can never be completed
                try:
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=prev[0])
                except Exception as exc:
                    log.warning("stale_multipart_abort_failed %s", kv(key=key, error=str(exc)[:200]))
        self.gate.check()
        if not upload_id:
            upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=meta)["UploadId"]
            self.journal.set_pending(self.bucket, key, sha, size, upload_id, [], self.clock())

        def abort() -> None:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            self.journal.drop_pending(self.bucket, key)

        part_size = self.settings.part_size
        done = {p["PartNumber"]: p for p in parts}
        h = hashlib.sha256()
        with self.gate.multipart(upload_id, self.bucket, key, abort), open(path, "rb") as fh:
            number = 0
            while chunk := fh.read(part_size):
                number += 1
                h.update(chunk)
                if number in done and done[number]["ETag"].strip('"') == hashlib.md5(chunk).hexdigest():  # noqa: S324 - S3's part ETag is MD5
                    continue
                self.gate.check()
                resp = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                           Body=chunk)
                done[number] = {"PartNumber": number, "ETag": resp["ETag"]}
                self.journal.set_pending(self.bucket, key, sha, size, upload_id,
                                         [done[n] for n in sorted(done)], self.clock())
            if h.hexdigest() != sha:
                abort()
                raise RuntimeError(f"file changed while uploading: {key!r}")
            with self.gate.commit():
                resp = self.s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": [done[n] for n in range(1, number + 1)]})
                entry = self._entry(key, text, escaped, size, sha, resp["VersionId"])
                self.journal.record_upload(self.bucket, entry, st, self.run_id)
        return entry

    # -- manifests ------------------------------------------------------------------------------

    def manifest(self, status: str, present: Iterable[bytes] | None = None) -> RunManifest:
        """The whole tree as of now: every present file and the version that holds it."""
        entries = self.journal.current_entries(self.bucket, self.prefix)
        if present is not None:
            keys = {key_for(self.prefix, rel)[0] for rel in present}
        else:
            keys = {e.key for e in entries
                    if os.path.lexists(os.path.join(self.root, key_for_rel(e)))}
        in_run = {r[0] for r in self.journal.run_keys(self.run_id)}
        files = [msgspec.structs.replace(e, uploaded_in_run=e.key in in_run) for e in entries if e.key in keys]
        return RunManifest(run_id=self.run_id, bucket=self.bucket, prefix=self.prefix, root=os.fsdecode(self.root),
                           mode=self.mode, started_at=self.started_at, finished_at=self.clock(), status=status,
                           files=files)

    def finish(self, status: str, present: Iterable[bytes] | None = None, final: bool = True) -> RunManifest:
        """Write the run's manifest to the bucket (never once halted) and record the run."""
        manifest = self.manifest(status, present if present is not None else self._present)
        key = ""
        if not self.gate.closed:
            key = f"{MANIFEST_DIR}/{self.prefix}{self.run_id}.json"
            try:
                with self.gate.commit():
                    self.s3.put_object(Bucket=self.bucket, Key=key, Body=msgspec.json.encode(manifest),
                                       ContentType="application/json")
            except Halted:
                key, manifest = "", msgspec.structs.replace(manifest, status="halted")
        else:
            manifest = msgspec.structs.replace(manifest, status="halted")
        if final:
            self._present = None
            self.journal.finish_run(self.run_id, manifest.status, manifest.finished_at)
        run = self.journal.run(self.run_id)
        uploaded = run[8] if run else 0
        if self.recorder:
            self.recorder.runs([RunRow(
                run_id=self.run_id, started_at=self.started_at, updated_at=manifest.finished_at,
                finished_at=manifest.finished_at if final else None, mode=self.mode, source=manifest.root,
                bucket=self.bucket, prefix=self.prefix, status=manifest.status, files=len(manifest.files),
                bytes=run[9] if run else 0, skipped=max(0, len(manifest.files) - uploaded), errors=self.errors,
                manifest_key=key, reason=self.gate.reason if manifest.status == "halted" else "")])
        log.info("backup_run_finished %s", kv(
            run_id=self.run_id, status=manifest.status, files=len(manifest.files), manifest=key))
        return manifest


def key_for_rel(entry: ManifestEntry) -> bytes:
    from dwcore.sinks.backup_s3 import rel_bytes

    return rel_bytes(entry.path, entry.escaped)
