"""Content signals: entropy, printable ratio, magic type, extension mismatch, partial encryption."""
from __future__ import annotations

import gzip
import io
import os
import random
import sqlite3
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from dwcore.agents.content import ContentSampler, entropy, looks_random, partial_encryption
from dwcore.agents.magic import ext_mismatch, magic_type, printable_ratio

RNG = random.Random(7)
TEXT = ("id,name,score,comment\n" + "".join(
    f"{i},user{i},{i * 7 % 100},this is a perfectly ordinary row number {i}\n" for i in range(2000)
)).encode()


def rand(n: int) -> bytes:
    return RNG.randbytes(n)


def test_entropy_bounds_and_text_vs_random() -> None:
    assert entropy(b"") == 0.0
    assert entropy(b"a" * 1000) == 0.0
    assert entropy(bytes(range(256)) * 4) == pytest.approx(8.0)
    assert entropy(TEXT[:12288]) < 5.0
    assert entropy(rand(12288)) > 7.9


def test_printable_ratio_counts_utf8_text_but_not_binary() -> None:
    assert printable_ratio(b"hello\tworld\n") == 1.0
    assert printable_ratio("Grüße, señor — naïve café\n".encode() * 20) == 1.0
    assert printable_ratio(rand(4096)) < 0.5
    # A sample cut in the middle of a multi-byte character is still text.
    assert printable_ratio(("é" * 100).encode()[1:]) == 1.0


def _zip(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n in names:
            z.writestr(n, b"<xml/>")
    return buf.getvalue()


def _sqlite(tmp_path: Path) -> bytes:
    db = tmp_path / "x.sqlite"
    con = sqlite3.connect(db)
    con.execute("create table t(a)")
    con.commit()
    con.close()
    return db.read_bytes()


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(10))
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(10))
    return buf.getvalue()


def _parquet(tmp_path: Path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / "t.parquet")
    return (tmp_path / "t.parquet").read_bytes()


def _png() -> bytes:
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00\x00"))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda tp: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "pdf"),
        (lambda tp: _zip(["a.txt"]), "zip"),
        (lambda tp: _zip(["[Content_Types].xml", "_rels/.rels", "word/document.xml"]), "docx"),
        (lambda tp: _zip(["[Content_Types].xml", "_rels/.rels", "xl/workbook.xml"]), "xlsx"),
        (lambda tp: _npz(), "npz"),
        (lambda tp: _npy(), "npy"),
        (lambda tp: _png(), "png"),
        (lambda tp: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rand(100), "jpeg"),
        (lambda tp: gzip.compress(TEXT), "gzip"),
        (lambda tp: zlib.compress(TEXT), "zlib"),
        (lambda tp: _parquet(tp), "parquet"),
        (lambda tp: Path("/bin/sh").resolve().read_bytes()[:4096], "elf"),
        (lambda tp: _sqlite(tp), "sqlite"),
        (lambda tp: TEXT, "text"),
        (lambda tp: rand(4096), "unknown"),
    ],
)
def test_magic_type_of_real_content(tmp_path: Path, make, kind: str) -> None:
    data = make(tmp_path)
    assert magic_type(data[:4096], data[-4096:], len(data)) == kind


def test_magic_type_empty() -> None:
    assert magic_type(b"", b"", 0) == "empty"


def test_ext_mismatch() -> None:
    assert ext_mismatch("report.pdf", "pdf") is False
    assert ext_mismatch("report.PDF", "unknown") is True
    assert ext_mismatch("notes.txt", "text") is False
    assert ext_mismatch("notes.txt", "unknown") is True
    assert ext_mismatch("budget.xlsx", "xlsx") is False
    assert ext_mismatch("budget.xlsx", "zip") is False  # a zip that did not name its parts first
    assert ext_mismatch("photo.jpg", "png") is True
    assert ext_mismatch("file.locked", "unknown") is None  # extension not known: no opinion
    assert ext_mismatch("empty.txt", "empty") is None


def test_looks_random_small_blocks() -> None:
    assert looks_random(rand(64))
    assert looks_random(rand(128))
    assert not looks_random(TEXT[:128])
    assert not looks_random(TEXT[:4096])
    assert not looks_random(rand(16))  # too few bytes to judge


# partial encryption, through the sampler on real files

def _write(path: Path, data: bytes) -> None:
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(data)


def _header_encrypt(data: bytes, n: int) -> bytes:
    return rand(n) + data[n:]


def _lockfile(data: bytes) -> bytes:
    # LockFile: every other 16-byte block encrypted
    out = bytearray(data)
    for off in range(0, len(out), 32):
        out[off : off + 16] = rand(len(out[off : off + 16]))
    return bytes(out)


def _sparse(data: bytes, every: int = 512, block: int = 16) -> bytes:
    # 16 random bytes every 512 bytes: ~3% of the file
    out = bytearray(data)
    for off in range(0, len(out), every):
        out[off : off + block] = rand(len(out[off : off + block]))
    return bytes(out)


@pytest.mark.parametrize("size", [3000, 9000, len(TEXT)])
@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        (lambda d: _header_encrypt(d, min(1024, len(d) // 2)), "header"),
        (lambda d: _header_encrypt(d, min(4096, len(d) // 2)), "header"),
        (_lockfile, "intermittent"),
        (_sparse, "intermittent"),
    ],
)
def test_partial_encryption_of_text_files_is_flagged(tmp_path: Path, size: int, attack, expected: str) -> None:
    path = tmp_path / "train.csv"
    original = TEXT[:size]
    path.write_bytes(original)
    sampler = ContentSampler()
    first = sampler.sample(str(path))
    assert first.magic_type == "text" and first.partial_encryption is None and first.prev_entropy is None
    _write(path, attack(original))
    assert path.stat().st_size == size
    sig = sampler.sample(str(path))
    assert sig.partial_encryption == expected
    assert sig.prev_entropy == first.entropy
    assert sig.prev_magic_type == "text"


def test_sparse_encryption_of_three_percent_in_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    original = (TEXT * 30)[: 2_000_000]
    path.write_bytes(original)
    sampler = ContentSampler()
    sampler.sample(str(path))
    _write(path, _sparse(original, every=512))
    assert sampler.sample(str(path)).partial_encryption == "intermittent"


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.replace(b"ordinary", b"ORDINARY"),  # in-place text edit
        lambda d: d[:100] + b"inserted line\n" + d[100:],  # insertion shifts everything
        lambda d: d + b"appended,row\n",
        lambda d: rand(len(d)),  # whole-file encryption: entropy says it, not "partial"
    ],
)
def test_ordinary_rewrites_are_not_partial_encryption(tmp_path: Path, edit) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(TEXT)
    sampler = ContentSampler()
    sampler.sample(str(path))
    path.write_bytes(edit(TEXT))
    assert sampler.sample(str(path)).partial_encryption is None


def test_rewriting_compressed_data_is_not_partial_encryption() -> None:
    old = ((0, gzip.compress(TEXT)[:4096]),)
    new = ((0, rand(1024) + old[0][1][1024:]),)
    assert partial_encryption(old, new) is None


def test_full_encryption_shows_in_entropy_and_type(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4\n" + TEXT)
    sampler = ContentSampler()
    before = sampler.sample(str(path))
    path.write_bytes(rand(len(TEXT) + 9))
    after = sampler.sample(str(path))
    assert before.magic_type == "pdf" and before.ext_mismatch is False
    assert after.magic_type == "unknown" and after.ext_mismatch is True
    assert after.entropy > 7.5 and after.prev_entropy == before.entropy and after.prev_magic_type == "pdf"


def test_budget_marks_skips_and_refills() -> None:
    now = [0.0]
    sampler = ContentSampler(bytes_per_s=20_000, clock=lambda: now[0])
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(5):
            p = os.path.join(d, f"f{i}.txt")
            Path(p).write_bytes(TEXT[:12288])
            paths.append(p)
        results = [sampler.sample(p) for p in paths]
        assert [r.sample_skipped for r in results] == [None, "budget", "budget", "budget", "budget"]
        assert results[1].entropy is None
        now[0] += 1.0
        assert sampler.sample(paths[1]).sample_skipped is None
    assert sampler.counters["skipped_budget"] == 4


def test_sample_skips_are_named(tmp_path: Path) -> None:
    sampler = ContentSampler()
    assert sampler.sample(str(tmp_path / "missing")).sample_skipped == "gone"
    assert sampler.sample(str(tmp_path)).sample_skipped == "not_regular"
    link = tmp_path / "link"
    link.symlink_to("/etc/passwd")
    assert sampler.sample(str(link)).sample_skipped == "unreadable"  # never follows a link
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert sampler.sample(str(fifo)).sample_skipped == "not_regular"  # never blocks on a FIFO


def test_non_utf8_name_is_sampled(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.txt"
    with open(raw, "wb") as f:
        f.write(TEXT[:500])
    sig = ContentSampler().sample(os.fsdecode(raw))
    assert sig.magic_type == "text" and sig.ext_mismatch is False


def test_cache_is_bounded_and_follows_renames(tmp_path: Path) -> None:
    sampler = ContentSampler(cache_bytes=50_000)
    for i in range(20):
        p = tmp_path / f"f{i}.txt"
        p.write_bytes(TEXT[:12288])
        sampler.sample(str(p))
    assert sampler.cache_bytes <= 50_000 and len(sampler) == 4
    sampler.moved(str(tmp_path / "f19.txt"), str(tmp_path / "g.txt"))
    (tmp_path / "f19.txt").rename(tmp_path / "g.txt")
    _write(tmp_path / "g.txt", _header_encrypt(TEXT[:12288], 2048))
    assert sampler.sample(str(tmp_path / "g.txt")).partial_encryption == "header"
    sampler.forget(str(tmp_path / "g.txt"))
    assert sampler.sample(str(tmp_path / "g.txt")).prev_entropy is None


def test_signals_fit_the_event_contract(tmp_path: Path) -> None:
    from dwcore.schemas.event import AccessEvent, Activity, make_event

    p = tmp_path / "a.txt"
    p.write_bytes(TEXT[:3000])
    sampler = ContentSampler()
    sampler.sample(str(p))
    _write(p, _header_encrypt(TEXT[:3000], 1024))
    sig = sampler.sample(str(p))
    ev = make_event(Activity.UPDATE, uid="u", time=1, user_name="alice", device="fs1", file_path=str(p),
                    **sig.fields())
    import msgspec

    back = msgspec.json.decode(msgspec.json.encode(ev), type=AccessEvent)
    assert back.partial_encryption == "header" and back.prev_magic_type == "text" and back.prev_entropy is not None
