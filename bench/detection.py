"""Detection quality through the real embedded pipeline: attacks caught, files lost, false alarms.

For every scenario a fresh corpus of real files (Python standard library sources, documents from
/usr/share/doc, generated CSV, PNG and compressed numpy arrays) is laid out first, then
`dataward run` is started on it as its own process (watcher, content sampler, detectors, store),
then the scenario plays in separate processes at a fixed pace (200 and 420 files/s; LockBit does
~420). The harness tails the alerts JSONL file and takes the alert time from its own clock when
the first high or critical alert line appears. Per scenario: detected, seconds from the first
damaging operation to that line, files damaged before it (operations completed by then), and for
benign work the high/critical alerts raised (false positives; low/medium ones are listed apart).

Run: `.venv/bin/python -m bench.detection [--rates 200 420] [--files 300] [--only NAME]`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.common import REPO, make_console

DAMAGE_WAIT_S = 12.0  # how long after the attack ends an alert may still count
BENIGN_WAIT_S = 8.0
GROWTH_WAIT_S = 3.0  # after an attack, for the incident's later versions (the "final" column)
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
        done.put(time.monotonic())


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


def _attack_proc(name: str, files: list[str], rate: float, done: mp.Queue) -> None:
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


def _benign_proc(name: str, root: str, work: str, rate: float, done: mp.Queue) -> None:
    BENIGN[name](Path(root), Path(work), rate, done)


# --- the harness ----------------------------------------------------------------------------------

class Watch:
    """Tails the alerts JSONL file; notes (monotonic) when each alert line first appears."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.alerts: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pos = 0
        buf = b""
        while not self._stop.is_set():
            if self.path.exists():
                with open(self.path, "rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                    pos += len(chunk)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                now = time.monotonic()
                self.alerts.extend((now, json.loads(line)) for line in lines if line.strip())
            time.sleep(0.005)

    def first(self, severities: tuple[str, ...]) -> tuple[float, dict] | None:
        return next(((t, a) for t, a in self.alerts if a["severity"] in severities), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _start(watch: Path, data: Path, jsonl: Path, log: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "dataward.cli", "run", "--watch", str(watch), "--data-dir", str(data),
           "--alerts-jsonl", str(jsonl), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=REPO)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready"):
            return proc
    raise RuntimeError(f"dataward run did not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(2)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_scenario(name: str, rate: float, files: int, tmp: Path) -> dict:
    root, data, work = tmp / "share", tmp / "data", tmp / "work"
    work.mkdir(parents=True)
    corpus = build_corpus(root, files)
    if name == "compress_and_rotate_logs":
        (root / "logs").mkdir()
        for i in range(files // 2):
            (root / "logs" / f"svc{i}.log").write_text(f"line {i}\n" * 400)
    jsonl = data / "alerts.jsonl"
    proc = _start(root, data, jsonl, tmp / "run.log")
    watch = Watch(jsonl)
    done: mp.Queue = mp.Queue()
    benign = name in BENIGN
    t0 = time.monotonic()
    if benign:
        procs = [mp.Process(target=_benign_proc, args=(name, str(root), str(work), rate, done))]
    elif name == "split_4_processes":
        procs = [mp.Process(target=_attack_proc, args=("encrypt_in_place", [str(p) for p in corpus[k::4]],
                                                      rate / 4, done)) for k in range(4)]
    elif name == "slow_attack":
        procs = [mp.Process(target=_attack_proc, args=("encrypt_in_place", [str(p) for p in corpus[:30]],
                                                      1 / 3, done))]
    else:
        procs = [mp.Process(target=_attack_proc, args=(name, [str(p) for p in corpus], rate, done))]
    for p in procs:
        p.start()
    times: list[float] = []
    while any(p.is_alive() for p in procs) or not done.empty():
        try:
            times.append(done.get(timeout=0.2))
        except Exception:
            continue
    for p in procs:
        p.join()
    ended = time.monotonic()
    deadline = ended + (BENIGN_WAIT_S if benign else DAMAGE_WAIT_S)
    while time.monotonic() < deadline and (benign or watch.first(("high", "critical")) is None
                                           or time.monotonic() < ended + GROWTH_WAIT_S):
        time.sleep(0.05)
    watch.stop()
    _stop(proc)
    times.sort()
    hit = watch.first(("high", "critical"))
    row: dict = {"scenario": name, "rate": rate, "kind": "benign" if benign else "attack", "ops": len(times)}
    if benign:
        row["false_positives"] = sorted({a["uid"] for _, a in watch.alerts if a["severity"] in ("high", "critical")})
        row["fp_rules"] = sorted({a["rule"] for _, a in watch.alerts if a["severity"] in ("high", "critical")})
        row["low_medium"] = sorted({a["rule"] for _, a in watch.alerts if a["severity"] in ("low", "medium")})
    else:
        start = times[0] if times else t0
        row["detected"] = hit is not None
        if hit is not None:
            row["seconds"] = round(hit[0] - start, 2)
            row["lost"] = sum(1 for t in times if t <= hit[0])
            row["rules"] = sorted({e["name"] for e in hit[1]["evidences"] if e["kind"] == "rule"})
            row["severity"] = hit[1]["severity"]
            final = [a for _, a in watch.alerts if a["uid"] == hit[1]["uid"]][-1]
            row["final"] = f"{final['severity']} v{final['version']} {final['file_count']} files"
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[200.0, 420.0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "detection.json")
    args = ap.parse_args(argv)
    console: Console = make_console()
    names = [n for n in (*ATTACKS, *BENIGN) if not args.only or n in args.only]
    rows = []
    for rate in args.rates:
        for name in names:
            if name == "slow_attack" and rate != args.rates[0]:
                continue  # one file every 3 s whatever the rate
            with tempfile.TemporaryDirectory(prefix="dw-detect-") as tmp:
                row = run_scenario(name, rate, args.files, Path(tmp))
            console.print(row)
            rows.append(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    render_table(console, rows)


def render_table(console: Console, rows: list[dict]) -> None:
    table = Table(title="Detection through `dataward run` (alert time taken by the harness)")
    for col in ("scenario", "files/s", "detected", "s to first high", "files lost", "rules at first high",
                "final", "false positives (high/critical)"):
        table.add_column(col)
    for r in rows:
        if r["kind"] == "attack":
            table.add_row(r["scenario"], f"{r['rate']:g}", "yes" if r.get("detected") else "NO",
                          str(r.get("seconds", "-")), str(r.get("lost", "-")), ", ".join(r.get("rules", [])),
                          r.get("final", ""), "")
        else:
            table.add_row(r["scenario"], f"{r['rate']:g}", "", "", "", "", "",
                          f"{len(r['false_positives'])} {', '.join(r['fp_rules'])}".strip())
    console.print(table)
    for rate in sorted({r["rate"] for r in rows}):
        lost = [r["lost"] for r in rows if r["kind"] == "attack" and r["rate"] == rate and "lost" in r]
        if lost:
            console.print(f"{rate:g} files/s: median files lost {statistics.median(lost):g} over {len(lost)} attacks")


if __name__ == "__main__":
    main()
