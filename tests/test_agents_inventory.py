"""`dataward agent inventory DIR` into the store, then `dataward report inventory` over it."""
from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

from dwcore.agents.inventory import scan
from tests.procs import run_cli


def _dataset(root: Path) -> None:
    (root / "train").mkdir(parents=True)
    (root / "train" / "part-0.csv").write_text("a,b\n" * 100)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY")
    (root / "train" / "labels.csv").write_bytes(buf.getvalue())  # a zip named .csv: the type says so
    (root / "empty.txt").write_bytes(b"")
    with open(os.fsencode(str(root)) + b"/mod\xe8le.bin", "wb") as f:
        f.write(b"\x7fELF" + b"\0" * 60)
    old = time.time() - 400 * 86400
    os.utime(root / "train" / "part-0.csv", (old, old))
    (root / "link").symlink_to("/etc/passwd")  # never followed, never listed


def test_scan_types_sizes_owners_and_names(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _dataset(root)
    rows = {os.path.basename(r.path): r for r in scan(str(root), "fs1")}
    assert set(rows) == {"part-0.csv", "labels.csv", "empty.txt", "mod\\xe8le.bin"}
    assert rows["part-0.csv"].file_type == "text" and rows["labels.csv"].file_type == "npz"
    assert rows["empty.txt"].file_type == "empty" and rows["mod\\xe8le.bin"].file_type == "elf"
    assert rows["mod\\xe8le.bin"].names_escaped and rows["part-0.csv"].size == 400
    assert rows["part-0.csv"].mtime < (time.time() - 399 * 86400) * 1000
    assert len({r.scan_id for r in rows.values()}) == 1 and all(r.owner for r in rows.values())


def test_cli_inventory_then_report(tmp_path: Path) -> None:
    root, data = tmp_path / "ds", tmp_path / "data"
    _dataset(root)
    proc = run_cli("agent", "inventory", str(root), "--data-dir", str(data), "--device", "fs1", timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "4 files" in proc.stdout
    rep = run_cli("report", "inventory", "--data-dir", str(data), "--format", "json", timeout=180)
    assert rep.returncode == 0, rep.stderr
    body = json.loads(rep.stdout)
    text = json.dumps(body)
    assert "npz" in text and "> 2 years" not in text and "1-2 years" in text
