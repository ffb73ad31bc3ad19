"""The spool: what was appended comes back until acked, across restarts and torn writes."""
from __future__ import annotations

import errno
import logging
import os

import pytest

from dwcore.agents import spool as spool_mod
from dwcore.agents.spool import Spool, SpoolError, SpoolFullError


def recs(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"user{i % 3}".encode(), f'{{"n":{i}}}'.encode()) for i in range(start, start + n)]


def values(sp: Spool) -> list[bytes]:
    return [v for _, _, v in sp.iter_unacked()]


def test_append_then_replay_after_restart_returns_unacked_in_order(tmp_path):
    sp = Spool(tmp_path)
    ids = sp.append(recs(10))
    sp.ack(ids[:4])
    sp.close()
    sp2 = Spool(tmp_path)  # a new process: acks come back from the sidecar
    got = list(sp2.iter_unacked())
    assert [k for _, k, _ in got] == [k for k, _ in recs(10)[4:]]
    assert [v for _, _, v in got] == [v for _, v in recs(10)[4:]]
    assert sp2.pending == 6


def test_fully_acked_sealed_segments_are_deleted(tmp_path):
    sp = Spool(tmp_path, segment_bytes=200)
    ids = [i for _ in range(5) for i in sp.append(recs(4))]
    assert len({seg for seg, _ in ids}) > 1
    sp.ack(ids)
    sp.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert Spool(tmp_path).pending == 0


def test_partly_acked_segment_is_kept_until_its_last_record_is_acked(tmp_path):
    sp = Spool(tmp_path, segment_bytes=1)  # every batch seals its segment
    a = sp.append(recs(3))
    b = sp.append(recs(3, 3))
    sp.ack(a[:2] + b)
    assert [p.name for p in sorted(tmp_path.glob("*.log"))] == [f"seg-{a[0][0]:012d}.log"]
    sp.ack(a[2:])
    assert list(tmp_path.glob("*.log")) == []


def test_iter_from_a_start_id_skips_earlier_and_acked(tmp_path):
    sp = Spool(tmp_path, segment_bytes=150)
    ids = [i for _ in range(4) for i in sp.append(recs(3))]
    sp.ack([ids[7]])
    got = [rid for rid, _, _ in sp.iter_unacked(ids[5])]
    assert got == [i for i in ids[5:] if i != ids[7]]


def test_torn_last_record_is_truncated_and_logged(tmp_path, caplog):
    sp = Spool(tmp_path)
    sp.append(recs(5))
    sp.close()
    seg = next(tmp_path.glob("*.log"))
    good = seg.stat().st_size
    with open(seg, "ab") as f:  # a crash in the middle of the next batch
        f.write(spool_mod._frame(b"user9", b'{"n":99}')[:11])
    with caplog.at_level(logging.WARNING, logger="dwcore.agents.spool"):
        sp2 = Spool(tmp_path)
    assert values(sp2) == [v for _, v in recs(5)]
    assert seg.stat().st_size == good
    assert "spool_torn_record" in caplog.text and "dropped_bytes=11" in caplog.text
    assert sp2.counters["torn"] == 1


def test_corrupt_record_stops_the_scan_there(tmp_path):
    sp = Spool(tmp_path)
    sp.append(recs(3))
    sp.close()
    seg = next(tmp_path.glob("*.log"))
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0xFF  # bit rot in the last record's value: its crc no longer matches
    seg.write_bytes(bytes(data))
    assert values(Spool(tmp_path)) == [v for _, v in recs(2)]


def test_appends_after_restart_go_to_a_new_segment_and_all_replay(tmp_path):
    sp = Spool(tmp_path)
    sp.append(recs(2))
    sp.close()
    sp2 = Spool(tmp_path)
    sp2.append(recs(2, 2))
    assert values(sp2) == [v for _, v in recs(4)]
    assert len(list(tmp_path.glob("*.log"))) == 2


def test_full_disk_raises_retriable_error_and_writes_nothing(tmp_path, monkeypatch):
    sp = Spool(tmp_path)
    sp.append(recs(2))
    seg = next(tmp_path.glob("*.log"))
    size = seg.stat().st_size
    real_write = os.write
    calls = {"n": 0}

    def half_then_enospc(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:7])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_mod.os, "write", half_then_enospc)
    with pytest.raises(SpoolFullError) as info:
        sp.append(recs(3, 2))
    assert info.value.retriable and isinstance(info.value, SpoolError)
    assert seg.stat().st_size == size and sp.pending == 2
    monkeypatch.setattr(spool_mod.os, "write", real_write)
    sp.append(recs(3, 2))  # space is back: the same batch goes in whole
    assert values(sp) == [v for _, v in recs(5)]
    assert values(Spool(tmp_path)) == [v for _, v in recs(5)]


def test_other_write_errors_are_not_retriable(tmp_path, monkeypatch):
    sp = Spool(tmp_path)

    def eio(fd, data):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(spool_mod.os, "write", eio)
    with pytest.raises(SpoolError) as info:
        sp.append(recs(1))
    assert not info.value.retriable and not isinstance(info.value, SpoolFullError)
