"""Backup throughput and alert -> halt latency, against a local moto S3 server started here.

Throughput: the same tree (N small files + a few large ones) uploaded by dataward's uploader
(hash, journal, intent, metadata, multipart) and, as the baseline, by plain boto3 the way
``aws s3 sync`` does it (upload_file with the same concurrency and multipart threshold). Then
the no-change rerun of both: dataward by stat + journal, the baseline by listing the bucket and
comparing sizes (sync's rule).
Latency: an alert handed to the controller while uploads are in flight (small PUTs; or a
multipart upload) until the halt is complete (commits drained, multipart aborted, marker durable).
Baseline: one small PutObject round trip on the same server.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

from bench.common import Result, make_console, render, save, setup_logging, timed_result, with_rate_ratios
from dwcore.schemas.alert import Alert, Severity
from dwcore.sinks.backup_controller import Controller, HaltPolicy
from dwcore.sinks.backup_gate import Gate
from dwcore.sinks.backup_journal import Journal
from dwcore.sinks.backup_s3 import make_client
from dwcore.sinks.backup_uploader import MiB, Uploader, UploadSettings

BENCH = "backup"
CONCURRENCY = 4


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    dummy = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in dummy.items():
        os.environ.setdefault(k, v)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            return proc, url
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)


def make_tree(root: Path, files: int, small_kib: int, large: int, large_mib: int) -> int:
    total = 0
    for i in range(files):
        d = root / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.bin").write_bytes(os.urandom(small_kib * 1024))
        total += small_kib * 1024
    for i in range(large):
        (root / f"large{i}.bin").write_bytes(os.urandom(large_mib * MiB))
        total += large_mib * MiB
    return total


def new_bucket(s3, name: str) -> str:
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def baseline_sync(s3, bucket: str, root: Path) -> tuple[int, float]:
    """aws s3 sync's way: list the bucket, upload what is missing or differs in size."""
    from boto3.s3.transfer import TransferConfig

    conf = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=1)
    t0 = time.perf_counter()
    remote: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        remote.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    todo = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = str(path.relative_to(root))
        if remote.get(key) != path.stat().st_size:
            todo.append((path, key))
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda pk: s3.upload_file(str(pk[0]), bucket, pk[1], Config=conf), todo))
    return len(todo), time.perf_counter() - t0


def dataward_run(s3, bucket: str, root: Path, state: Path) -> tuple[int, float]:
    journal = Journal(state)
    gate = Gate(journal.marker)
    up = Uploader(s3, journal, gate, bucket, "", str(root), UploadSettings(concurrency=CONCURRENCY))
    t0 = time.perf_counter()
    up.start_run()
    stats = up.backup_tree()
    up.finish("complete")
    seconds = time.perf_counter() - t0
    journal.close()
    return stats.uploaded, seconds


def alert(uid: str) -> Alert:
    sev = Severity.CRITICAL
    now = int(time.time() * 1000)
    return Alert(uid=uid, title="bench", rule="mass_rename", rule_uid="r", severity=sev, severity_id=sev.ocsf_id,
                 user="mallory", first_seen=now - 50, detected_at=now, signal="renames", observed=100,
                 threshold=25, window_s=10, file_count=100, paths=[])


def halt_latency(s3, bucket: str, root: Path, state: Path, runs: int, multipart: bool) -> list[float]:
    """Alert -> halt complete, with uploads in flight."""
    journal = Journal(state)
    out: list[float] = []
    for i in range(runs):
        gate = Gate(journal.marker)
        ctl = Controller(journal, gate, HaltPolicy(), s3=s3, tag_suspects=False)
        src = root / f"run{i}"
        src.mkdir(parents=True, exist_ok=True)
        if multipart:
            (src / "big.bin").write_bytes(os.urandom(40 * MiB))
        else:
            for j in range(400):
                (src / f"s{j}.bin").write_bytes(os.urandom(16 * 1024))
        up = Uploader(s3, journal, gate, bucket, f"lat{i}/", str(src),
                      UploadSettings(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=CONCURRENCY))
        up.start_run()
        worker = threading.Thread(target=up.backup_tree)
        worker.start()
        time.sleep(0.3)  # uploads under way
        ctl.on_alert(alert(f"bench-{multipart}-{i}"))
        out.append(ctl.latencies_ms[-1])
        worker.join(60)
        ctl.wait_after_halt()
        ctl.resume(f"bench-{multipart}-{i}", "bench")
    journal.close()
    return out


def put_rtt(s3, bucket: str, runs: int) -> list[float]:
    body = os.urandom(16 * 1024)
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        s3.put_object(Bucket=bucket, Key=f"rtt/{i}", Body=body)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def run(files: int, large: int, runs: int, console: Console) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="dw-bench-backup-") as tmp:
        tmpd = Path(tmp)
        proc, url = start_moto(tmpd / "moto.log")
        try:
            s3 = make_client(url, pool=CONCURRENCY + 8)
            src = tmpd / "src"
            total = make_tree(src, files, 64, large, 24)
            n = files + large
            console.print(f"tree: {n:,} files, {total / MiB:,.0f} MiB; moto at {url}")
            b1, b2 = new_bucket(s3, "baseline-sync"), new_bucket(s3, "dataward-backup")
            up_base, t_base = baseline_sync(s3, b1, src)
            up_dw, t_dw = dataward_run(s3, b2, src, tmpd / "state")
            re_base_n, re_base = baseline_sync(s3, b1, src)
            re_dw_n, re_dw = dataward_run(s3, b2, src, tmpd / "state")
            mib = total / MiB
            thr = with_rate_ratios([
                timed_result(BENCH, "first run: boto3 sync-like", n, t_base, baseline=True,
                             extra={"uploaded": up_base, "MiB/s": mib / t_base}),
                timed_result(BENCH, "first run: dataward backup", n, t_dw,
                             extra={"uploaded": up_dw, "MiB/s": mib / t_dw}),
            ])
            rerun = with_rate_ratios([
                timed_result(BENCH, "no-change rerun: boto3 sync-like (list+size)", n, re_base, baseline=True,
                             extra={"uploaded": re_base_n}),
                timed_result(BENCH, "no-change rerun: dataward (stat+journal)", n, re_dw,
                             extra={"uploaded": re_dw_n}),
            ])
            lat_small = halt_latency(s3, b2, tmpd / "lat", tmpd / "state-lat", runs, multipart=False)
            lat_mp = halt_latency(s3, b2, tmpd / "latmp", tmpd / "state-latmp", max(3, runs // 4), multipart=True)
            rtt = put_rtt(s3, b2, 50)
            lat = []
            for name, vals, base in (("one 16 KiB PutObject round trip", rtt, True),
                                     ("alert -> halt, small PUTs in flight", lat_small, False),
                                     ("alert -> halt, multipart in flight", lat_mp, False)):
                med = statistics.median(vals)
                lat.append(Result(bench=BENCH, name=name, count=len(vals), seconds=med / 1000, rate=None,
                                  baseline=base, extra={"p50 ms": med, "p99 ms": p99(vals), "max ms": max(vals)},
                                  samples=[round(v, 2) for v in vals]))
            base_med = statistics.median(rtt)
            for r in lat:
                r.ratio = (r.seconds * 1000) / base_med if base_med else None
            return thr + rerun + lat
        finally:
            proc.terminate()
            proc.wait(20)


def report(console: Console, results: list[Result]) -> None:
    render(console, "Backup throughput: first run (same tree, same concurrency)", results[:2], count_label="files")
    render(console, "Backup: rerun with nothing changed", results[2:4], count_label="files")
    render(console, "Alert -> halt (controller, uploads in flight)", results[4:], count_label="runs",
           seconds_label="median s", rate_label=None, ratio_label="x PUT RTT")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=1000, help="small files (64 KiB each)")
    p.add_argument("--large", type=int, default=2, help="large files (24 MiB each, multipart)")
    p.add_argument("--runs", type=int, default=20, help="halts measured with small PUTs in flight")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    setup_logging(args.verbose)
    console = make_console()
    results = run(args.files, args.large, args.runs, console)
    report(console, results)
    save(results, BENCH)


if __name__ == "__main__":
    main()
