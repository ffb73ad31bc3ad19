"""The scenarios of bench/detection.py: a corpus of real files, attacks and benign work.

Each workload runs in its own process(es) at a fixed pace and puts the wall-clock time
(``time.time()``) of every completed operation on a queue, so the harness can compare it with the
times the watcher stamped on the events.
"""
from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import shutil
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

RANSOM_NOTE = "HOW_TO_DECRYPT_FILES.txt"
NOTE_TEXT = "All your files have been encrypted. To decrypt them, pay in bitcoin.\n"


# --- corpus ---------------------------------------------------------------------------------------

def _png(width: int, height: int, seed: int) -> bytes:
    import struct

    rows = b"".join(b"\x00" + bytes((x * seed + y) % 256 for x in range(width * 3)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def build_corpus(root: Path, files: int) -> list[Path]:
    """``files`` real files spread over ~20 directories: a quarter of each kind."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    stdlib = sorted(Path(os.__file__).parent.glob("*.py"))
    docs = sorted(p for p in Path("/usr/share/doc").rglob("*") if p.is_file() and p.stat().st_size > 200)[:2000]
    rng = np.random.default_rng(7)
    for i in range(files):
        d = root / f"dept{i % 20:02d}"
        d.mkdir(exist_ok=True)
        kind = i % 4
        if kind == 0 and stdlib:
            src = stdlib[i % len(stdlib)]
            p = d / f"{src.stem}_{i}.py"
            shutil.copyfile(src, p)
        elif kind == 1 and docs:
            src = docs[i % len(docs)]
            p = d / f"doc_{i}{''.join(src.suffixes[-1:]) or '.txt'}"
            shutil.copyfile(src, p)
        elif kind == 2:
            p = d / f"table_{i}.csv"
            rows = rng.integers(0, 10_000, size=(200, 6))
            p.write_text("a,b,c,d,e,f\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
        else:
            if i % 8 == 3:
                p = d / f"image_{i}.png"
                p.write_bytes(_png(48, 32, i))
            else:
                p = d / f"array_{i}.npz"
                with open(p, "wb") as fh:
                    np.savez_compressed(fh, x=rng.normal(size=2000))
        out.append(p)
    return out


# --- attack and benign workloads (run in child processes) ------------------------------------------

def _keystream(n: int) -> bytes:
    return os.urandom(n)


def _encrypt_full(p: Path) -> None:
    data = p.read_bytes()
    with open(p, "r+b") as fh:
        fh.write(bytes(a ^ b for a, b in zip(data, _keystream(len(data)), strict=True)) if len(data) < 4096
                 else _keystream(len(data)))
        fh.truncate()


def _encrypt_header(p: Path) -> None:
    with open(p, "r+b") as fh:
        head = fh.read(4096)
        fh.seek(0)
        fh.write(_keystream(len(head)))


def _encrypt_intermittent(p: Path) -> None:
    data = bytearray(p.read_bytes())
    for off in range(0, min(len(data), 1 << 16), 32):  # every other 16 bytes (LockFile)
        data[off:off + 16] = _keystream(len(data[off:off + 16]))
    with open(p, "r+b") as fh:
        fh.write(data)


def _paced(ops: list[Callable[[], None]], rate: float, done: mp.Queue) -> None:
    start = time.monotonic()
    for i, op in enumerate(ops):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        op()
        done.put(time.time())  # wall clock: compared with the events' own times


def _attack_ops(name: str, files: list[Path]) -> list[Callable[[], None]]:
    def rename_to(p: Path, ext: str) -> Callable[[], None]:
        return lambda: p.rename(p.with_name(p.name + ext))

    if name == "encrypt_in_place":
        return [lambda p=p: _encrypt_full(p) for p in files]
    if name == "encrypt_header_only":
        return [lambda p=p: _encrypt_header(p) for p in files]
    if name == "encrypt_intermittent":
        return [lambda p=p: _encrypt_intermittent(p) for p in files]
    if name == "encrypt_then_rename_locked":
        return [lambda p=p: (_encrypt_full(p), p.rename(p.with_name(p.name + ".locked"))) for p in files]
    if name == "rename_random_ext":
        return [rename_to(p, f".{os.urandom(3).hex()}") for p in files]
    if name == "copy_encrypt_delete":
        def ced(p: Path) -> None:
            p.with_name(p.name + ".enc").write_bytes(_keystream(p.stat().st_size))
            p.unlink()
        return [lambda p=p: ced(p) for p in files]
    if name == "notes_then_encrypt":
        ops: list[Callable[[], None]] = []
        seen: set[Path] = set()
        for p in files:
            if p.parent not in seen:
                seen.add(p.parent)
                ops.append(lambda d=p.parent: (d / RANSOM_NOTE).write_text(NOTE_TEXT))
            ops.append(lambda p=p: _encrypt_full(p))
        return ops
    if name == "mass_delete":
        return [p.unlink for p in files]
    raise ValueError(name)


def attack_proc(name: str, files: list[str], rate: float, done: mp.Queue) -> None:
    _paced(_attack_ops(name, [Path(f) for f in files]), rate, done)


# Benign workloads: each a function(root, work, rate) that does real work under root.
def _benign_extract(root: Path, work: Path, rate: float, done: mp.Queue) -> None:
    tgz = work / "stdlib.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for p in sorted(Path(os.__file__).parent.glob("*.py"))[:300]:
            tar.add(p, arcname=f"lib/{p.name}")
    with tarfile.open(tgz) as tar:
        members = tar.getmembers()
        dest = root / "extracted"
        _paced([lambda m=m: tar.extract(m, dest, filter="data") for m in members], rate, done)


def _benign_create_archive(root: Path, work: Path, rate: float, done: mp.Queue) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with tarfile.open(root / "backup.tgz", "w:gz") as tar:
        _paced([lambda p=p: tar.add(p, arcname=str(p.relative_to(root))) for p in files], rate, done)


def _benign_compress_logs(root: Path, work: Path, rate: float, done: mp.Queue) -> None:
    logs = sorted(root.glob("logs/*.log"))

    def rotate(p: Path) -> None:
        with open(p, "rb") as src, gzip.open(str(p) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        p.unlink()
        p.write_text("")  # the service starts a fresh log
    _paced([lambda p=p: rotate(p) for p in logs], rate, done)


def _benign_git(root: Path, work: Path, rate: float, done: mp.Queue) -> None:
    repo = root / "repo"
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x"}

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)
    repo.mkdir()
    git("init", "-q")
    srcs = sorted(Path(os.__file__).parent.glob("*.py"))[:200]
    ops: list[Callable[[], None]] = []
    for batch in range(4):
        def commit(b: int = batch) -> None:
            for p in srcs[b * 50:(b + 1) * 50]:
                shutil.copyfile(p, repo / p.name)
            git("add", "-A")
            git("commit", "-qm", f"batch {b}")
        ops.append(commit)
    ops.append(lambda: git("gc", "-q", "--prune=now"))
    _paced(ops, max(1.0, rate / 100), done)


def _benign_copy_tree(root: Path, work: Path, rate: float, done: mp.Queue) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    dest = root / "copy"

    def cp(p: Path) -> None:
        t = dest / p.relative_to(root)
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, t)
    _paced([lambda p=p: cp(p) for p in files], rate, done)


def _benign_arrays(root: Path, work: Path, rate: float, done: mp.Queue) -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    out = root / "features"
    out.mkdir()

    def save(i: int) -> None:
        with open(out / f"shard_{i:04d}.npz", "wb") as fh:
            np.savez_compressed(fh, x=rng.normal(size=4000), y=rng.integers(0, 9, 4000))
    _paced([lambda i=i: save(i) for i in range(300)], rate, done)


def _benign_edit(root: Path, work: Path, rate: float, done: mp.Queue) -> None:
    texts = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".csv", ".txt"))[:300]

    def edit(p: Path) -> None:
        with open(p, "a") as fh:
            fh.write("\n# edited\n")
    _paced([lambda p=p: edit(p) for p in texts], rate, done)


def _benign_clean_build(root: Path, work: Path, rate: float, done: mp.Queue) -> None:
    build = root / "build"
    srcs = sorted(Path(os.__file__).parent.glob("*.py"))[:300]
    ops: list[Callable[[], None]] = []
    for i, p in enumerate(srcs):
        ops.append(lambda p=p, i=i: (build / f"obj{i % 10}").mkdir(parents=True, exist_ok=True)
                   or (build / f"obj{i % 10}" / (p.stem + ".o")).write_bytes(zlib.compress(p.read_bytes())))
    ops.append(lambda: time.sleep(1.0))
    ops.append(lambda: shutil.rmtree(build))
    _paced(ops, rate, done)


BENIGN: dict[str, Callable[[Path, Path, float, mp.Queue], None]] = {
    "archive_extraction": _benign_extract,
    "archive_creation": _benign_create_archive,
    "compress_and_rotate_logs": _benign_compress_logs,
    "git_commits_and_gc": _benign_git,
    "copy_tree": _benign_copy_tree,
    "write_compressed_arrays": _benign_arrays,
    "edit_files": _benign_edit,
    "clean_build_dir": _benign_clean_build,
}
ATTACKS = ("encrypt_in_place", "encrypt_header_only", "encrypt_intermittent", "encrypt_then_rename_locked",
           "rename_random_ext", "copy_encrypt_delete", "notes_then_encrypt", "mass_delete",
           "split_4_processes", "slow_attack")


def benign_proc(name: str, root: str, work: str, rate: float, done: mp.Queue) -> None:
    BENIGN[name](Path(root), Path(work), rate, done)
