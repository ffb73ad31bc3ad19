"""Watcher batches pass through the enrichment stages: content signals on real inotify events."""
from __future__ import annotations

import os
import random
from pathlib import Path

from dwcore.agents.content import ContentSampler
from dwcore.agents.pipeline import ContentStage, chain
from dwcore.agents.watcher import FileWatcher
from dwcore.schemas.event import AccessEvent, Activity
from tests.test_agents_watcher import Sink, wait_for

TEXT = "".join(f"{i},alice,{i * 3},an ordinary line of a training set\n" for i in range(400)).encode()


def _signals(sink: Sink, path: Path, pred) -> list[AccessEvent]:
    return [e for e in sink.events if e.file_path == str(path) and pred(e)]


def test_watched_writes_carry_content_signals_and_partial_encryption(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    sink = Sink()
    w = FileWatcher([str(root)], "fs1", chain([ContentStage(ContentSampler())], sink))
    w.start()
    try:
        header = root / "header.csv"
        sparse = root / "sparse.txt"
        for p in (header, sparse):
            p.write_bytes(TEXT)
        wait_for(lambda: all(_signals(sink, p, lambda e: e.magic_type == "text") for p in (header, sparse)),
                 what="text samples")
        rng = random.Random(1)
        with open(header, "r+b") as f:
            f.write(rng.randbytes(1024))
        with open(sparse, "r+b") as f:
            for off in range(0, len(TEXT), 32):  # LockFile: every other 16 bytes
                f.seek(off)
                f.write(rng.randbytes(16))
        wait_for(lambda: _signals(sink, header, lambda e: e.partial_encryption == "header"), what="header flag")
        wait_for(lambda: _signals(sink, sparse, lambda e: e.partial_encryption == "intermittent"),
                 what="intermittent flag")
        ev = _signals(sink, header, lambda e: e.partial_encryption == "header")[0]
        assert ev.activity_id == Activity.UPDATE and ev.prev_magic_type == "text" and ev.ext_mismatch is True
        # Directories get no content fields; deletes keep flowing.
        (root / "d").mkdir()
        sparse.unlink()
        wait_for(lambda: any(e.activity_id == Activity.DELETE for e in sink.events), what="delete")
        d = [e for e in sink.events if e.file_path == str(root / "d")]
        assert d and d[0].magic_type is None and d[0].sample_skipped is None
    finally:
        w.stop()


def test_rename_over_a_sampled_file_compares_with_what_it_replaced(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    sink = Sink()
    sampler = ContentSampler()
    w = FileWatcher([str(root)], "fs1", chain([ContentStage(sampler)], sink))
    w.start()
    try:
        target = root / "model.txt"
        target.write_bytes(TEXT)
        wait_for(lambda: _signals(sink, target, lambda e: e.magic_type == "text"), what="sample")
        tmp = root / ".model.txt.tmp"
        tmp.write_bytes(random.Random(2).randbytes(2048) + TEXT[2048:])
        os.replace(tmp, target)
        wait_for(lambda: [e for e in sink.events if e.activity_id == Activity.RENAME
                          and e.partial_encryption == "header"], what="rename-over flagged")
    finally:
        w.stop()


def test_a_failing_stage_never_costs_an_event() -> None:
    got: list[AccessEvent] = []

    def broken(batch):
        raise RuntimeError("boom")

    from dwcore.schemas.event import make_event

    ev = make_event(Activity.CREATE, uid="u1", time=1, user_name="a", device="d", file_path="/x")
    chain([broken], got.extend)([ev])
    assert got == [ev]
