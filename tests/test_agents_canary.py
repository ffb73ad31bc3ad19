"""Canaries: planted decoys are valid files, recorded, and any touch (reads included) is marked."""
from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

from dwcore.agents import canary
from dwcore.agents.magic import magic_type
from dwcore.agents.pipeline import chain
from dwcore.schemas.event import Activity, make_event
from tests.test_agents_watcher import Sink, wait_for


def test_plant_writes_valid_believable_files_and_records_them(tmp_path: Path) -> None:
    share, data = tmp_path / "share", tmp_path / "data"
    share.mkdir()
    planted = canary.plant([str(share)], data, seed=1)
    assert {c.kind for c in planted} == set(canary.KINDS)
    kinds = {}
    for c in planted:
        raw = Path(c.path).read_bytes()
        kinds[c.kind] = magic_type(raw[:4096], raw[-4096:], len(raw))
        assert len(raw) == c.size and Path(c.path).stat().st_mtime < time.time() - 29 * 86400  # back-dated
    assert kinds == {"xlsx": "xlsx", "docx": "docx", "pdf": "pdf", "csv": "text", "txt": "text"}
    xl = next(c for c in planted if c.kind == "xlsx")
    with zipfile.ZipFile(io.BytesIO(Path(xl.path).read_bytes())) as z:
        assert z.testzip() is None and "xl/worksheets/sheet1.xml" in z.namelist()
    pdf = Path(next(c for c in planted if c.kind == "pdf").path).read_bytes()
    assert pdf.rstrip().endswith(b"%%EOF") and b"startxref" in pdf
    reg = json.loads((data / "canaries.json").read_text())
    assert len(reg["canaries"]) == 5
    assert not [p for p in os.listdir(share) if p.startswith(".~")]  # no temp files left behind


def test_plant_never_overwrites_and_is_idempotent(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "Payroll_2026_Q3.xlsx").write_bytes(b"the user's real file")
    first = canary.plant([str(share)], tmp_path / "d")
    assert "xlsx" not in {c.kind for c in first}
    assert (share / "Payroll_2026_Q3.xlsx").read_bytes() == b"the user's real file"
    assert canary.plant([str(share)], tmp_path / "d") == []
    assert len(canary.load(tmp_path / "d")) == 4


def test_plant_in_a_non_utf8_directory(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/Buchhaltung_\xe4"
    os.mkdir(raw)
    planted = canary.plant([raw], tmp_path / "d", ["txt"])
    assert planted[0].escaped and "\\xe4" in planted[0].path
    cs = canary.CanarySet(tmp_path / "d", grace_ms=0)
    assert cs.hit(planted[0].path, int(time.time() * 1000))


def test_stage_marks_touches_of_canaries_after_the_grace(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    c = canary.plant([str(share)], tmp_path / "d", ["csv"])[0]
    stage = canary.CanaryStage(canary.CanarySet(tmp_path / "d", grace_ms=2000))
    t = c.planted_at + 5000
    evs = [
        make_event(Activity.UPDATE, uid="1", time=t, user_name="m", device="d", file_path=c.path),
        make_event(Activity.RENAME, uid="2", time=t, user_name="m", device="d", file_path=c.path,
                   file_new_path=c.path + ".locked"),
        make_event(Activity.RENAME, uid="3", time=t, user_name="m", device="d", file_path="/x/tmp",
                   file_new_path=c.path),  # something renamed over the canary
        make_event(Activity.UPDATE, uid="4", time=t, user_name="m", device="d", file_path=str(share / "real.csv")),
        make_event(Activity.UPDATE, uid="5", time=c.planted_at + 100, user_name="m", device="d", file_path=c.path),
    ]
    out = stage(evs)
    assert [e.canary for e in out] == [True, True, True, False, False]


def test_registry_changes_are_picked_up_by_a_running_stage(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    cs = canary.CanarySet(tmp_path / "d", grace_ms=0)
    assert cs.by_path == {}
    c = canary.plant([str(share)], tmp_path / "d", ["txt"])[0]
    cs._checked = 0.0  # the next refresh is due
    assert cs.refresh() and c.path in cs.by_path


def test_reading_a_canary_is_reported_as_a_canary_read(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    c = canary.plant([str(share)], tmp_path / "d", ["docx"])[0]
    sink = Sink()
    watch = canary.CanaryReadWatch(canary.CanarySet(tmp_path / "d", grace_ms=0), "fs1", chain([], sink),
                                   user_of=lambda p: ("root", "0"))
    watch.start()
    try:
        Path(share / "unrelated.txt").write_text("x")
        Path(share / "unrelated.txt").read_text()
        with open(c.path, "rb") as f:
            f.read(100)
        wait_for(lambda: sink.events, what="canary read")
        ev = sink.events[0]
        assert (ev.activity_id, ev.canary, ev.file_path) == (Activity.READ, True, c.path)
        with open(c.path, "rb") as f:  # a second read within a second is the same touch
            f.read()
        time.sleep(0.3)
        assert len(sink.events) == 1
    finally:
        watch.stop()


def test_writes_to_a_canary_go_early_to_the_fast_path_and_reads_go_both_ways(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    c = canary.plant([str(share)], tmp_path / "d", ["docx"])[0]
    sink = Sink()
    early: list[tuple[list, bool]] = []
    watch = canary.CanaryReadWatch(canary.CanarySet(tmp_path / "d", grace_ms=0), "fs1", chain([], sink),
                                   user_of=lambda p: ("root", "0"), early=lambda evs, pub: early.append((evs, pub)))
    watch.start()
    try:
        with open(c.path, "r+b") as f:
            f.write(os.urandom(512))
        wait_for(lambda: early, what="early canary write")
        evs, published = early[0]
        assert not published and [(e.activity_id, e.canary, e.file_path) for e in evs] == [
            (Activity.UPDATE, True, c.path)]
        assert sink.events == []  # the file watcher publishes the write itself
        with open(c.path, "rb") as f:
            f.read(100)
        wait_for(lambda: sink.events, what="canary read")
        assert any(pub and e.activity_id == Activity.READ for evs, pub in early for e in evs)
    finally:
        watch.stop()
