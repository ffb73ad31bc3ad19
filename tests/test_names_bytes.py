"""File names are bytes: a name that is not UTF-8 must be carried losslessly and detected on like
any other, and one bad event must never cost another its history or its alert.

The probe: 300 renames to ``*.locked\\xff`` raised no alert and stored nothing; one such name among
another user's 300 renames suppressed that user's critical alert for good; the batch was dropped
and parking it failed; in the agent the publisher retried one such event forever.
"""
from __future__ import annotations

import json
import os
import time

import pytest
from confluent_kafka import Consumer

from dataward.config import AgentConfig, Config, StoreConfig
from dataward.embedded import EmbeddedPipeline
from dwcore.agents.publisher import KafkaPublisher
from dwcore.agents.watcher import FileWatcher
from dwcore.detectors.policy import load_policy
from dwcore.schemas.codec import decode_event, encodable_events, encode, repair_event
from dwcore.schemas.ddl import EVENTS_TABLE
from dwcore.schemas.event import Activity, make_event
from dwcore.schemas.paths import name_bytes, name_text, names_text
from dwcore.sinks.errors import StoreError
from dwcore.sinks.parking import Keeper, ParkingLot
from dwcore.sinks.store import Store
from tests.procs import wait_for

NOW_MS = int(time.time() * 1000)


def rename(i: int, user: str, new: str) -> object:
    return make_event(Activity.RENAME, uid=f"{user}-{i}", time=NOW_MS + i, user_name=user, device="fs1",
                      share="/srv", file_path=f"/srv/d/f{i}.csv", file_new_path=new.format(i=i))


def poison(i: int = 0):
    """What os.fsdecode gives for a non-UTF-8 name: a str with a lone surrogate, unencodable."""
    return rename(i, "mallory", os.fsdecode(f"/srv/d/f{i}.csv.locked".encode() + b"\xff"))


# -- the text form --------------------------------------------------------------------------

def test_names_of_one_event_share_one_flag_and_round_trip():
    raws = (b"/srv/a\\b.txt", b"/srv/a\\b.txt.locked\xff", b"/srv")
    texts, escaped = names_text(*raws)
    assert escaped and texts[1] == "/srv/a\\\\b.txt.locked\\xff"
    assert [name_bytes(t, escaped) for t in texts] == list(raws)  # the valid one with its backslash too


def test_repair_makes_a_raw_bytes_event_encodable_and_lossless():
    bad = poison(3)
    with pytest.raises(UnicodeEncodeError):
        encode(bad)
    fixed = repair_event(bad)
    assert fixed.names_escaped and fixed.file_new_path.endswith(".locked\\xff")
    back = decode_event(encode(fixed))
    assert name_bytes(back.file_new_path, True) == b"/srv/d/f3.csv.locked\xff"
    assert name_bytes(back.file_path, True) == b"/srv/d/f3.csv"
    good = rename(1, "alice", "/srv/d/f{i}.csv.locked")
    batch = [good, bad]
    out = encodable_events(batch)
    assert out[0] is good and out[1].names_escaped


# -- the watcher ----------------------------------------------------------------------------

def test_watcher_carries_non_utf8_names_losslessly(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    got = []
    watcher = FileWatcher([str(root)], "fs1", got.extend)
    watcher.start()
    try:
        broot = os.fsencode(root)
        for i in range(5):
            old = broot + f"/f{i}.csv".encode()
            with open(old, "wb") as fh:
                fh.write(b"x")
            os.rename(old, old + b".locked\xff")
        wait_for(lambda: sum(e.activity_id == Activity.RENAME for e in got) == 5, 10, what="5 renames")
    finally:
        watcher.stop()
    renames = [e for e in got if e.activity_id == Activity.RENAME]
    assert all(e.names_escaped for e in renames)
    on_disk = {broot + f"/f{i}.csv.locked".encode() + b"\xff" for i in range(5)}
    assert {name_bytes(e.file_new_path, True) for e in renames} == on_disk
    for e in got:
        encode(e)  # every event encodes


# -- embedded: detection and history --------------------------------------------------------

@pytest.fixture
def pipeline(tmp_path):
    watched = tmp_path / "watched"
    watched.mkdir()
    config = Config(data_dir=str(tmp_path / "state"), alerts_jsonl=str(tmp_path / "alerts.jsonl"),
                    agent=AgentConfig(device="fs1", tune_inotify=False), store=StoreConfig(flush_interval_s=0.05))
    alerts = []
    p = EmbeddedPipeline(config, load_policy(), [str(watched)], on_alert=alerts.append)
    p.start()
    yield p, watched, alerts, tmp_path / "alerts.jsonl"
    p.stop()


def _stored(p, sql):
    return p._store.reader.query(sql).rows


def test_300_renames_to_non_utf8_names_raise_the_critical_alert(pipeline):
    p, watched, alerts, jsonl = pipeline
    bdir = os.fsencode(watched) + b"/data"
    os.mkdir(bdir)
    for i in range(300):
        name = bdir + f"/sample-{i:05d}.csv".encode()
        with open(name, "wb") as fh:
            fh.write(b"payload")
        os.rename(name, name + b".locked\xff")
    wait_for(lambda: any(a.rule == "mass_rename" and a.severity == "critical" for a in alerts), 30,
             what="critical mass_rename")
    expected = {bdir + f"/sample-{i:05d}.csv.locked".encode() + b"\xff" for i in range(300)}

    def stored_names() -> set[bytes]:
        # A create and its rename that fall into one watcher batch may be stored as a Create of the
        # new name; either way every non-UTF-8 name must be stored, flagged, and round-trip exactly.
        rows = _stored(p, "SELECT if(activity_name = 'Rename', file_new_path, file_path) FROM events "
                          "WHERE names_escaped")
        return {name_bytes(r[0], True) for r in rows}

    wait_for(lambda: stored_names() >= expected, 30, interval=0.2, what="all 300 non-UTF-8 names stored")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert any(a["rule"] == "mass_rename" and a["severity"] == "critical" for a in lines)


def test_one_raw_bytes_event_costs_no_other_user_its_alert_or_history(pipeline):
    p, _, alerts, _ = pipeline
    batch = [poison(0)] + [rename(i, "alice", "/srv/d/f{i}.csv.locked") for i in range(300)]
    p.publish(batch)
    wait_for(lambda: any(a.user == "alice" and a.severity == "critical" for a in alerts), 30,
             what="alice's critical alert")
    wait_for(lambda: _stored(p, "SELECT count() FROM events WHERE user_name = 'alice'") == [[300]], 30,
             interval=0.2, what="alice's 300 events")
    wait_for(lambda: _stored(p, "SELECT count() FROM events WHERE user_name = 'mallory' AND names_escaped")
             == [[1]], 30, interval=0.2, what="the raw-bytes event itself, repaired")
    # alice's state says alerted, and the alert did go out: a second burst escalates nothing new,
    # but a fresh user still alerts (detection is alive for everyone)
    p.publish([rename(i, "bob", "/srv/e/f{i}.csv.locked") for i in range(300)])
    wait_for(lambda: any(a.user == "bob" for a in alerts), 30, what="bob's alert")


def test_store_refusing_one_row_costs_the_batch_nothing(tmp_path):
    store = Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=3650)
    store.writer.ensure_schema()
    try:
        keeper = Keeper(store.writer, ParkingLot(tmp_path / "parked"), "embedded:fs1")
        batch = [rename(i, "alice", "/srv/d/f{i}.csv.locked") for i in range(200)]
        batch[137] = poison(137)  # the columnar insert cannot encode it
        with pytest.raises(StoreError) as refused:
            store.writer.insert_events(batch)
        keeper.failed(EVENTS_TABLE, batch, refused.value)  # what the batcher does with a permanent error
        assert store.reader.query("SELECT count() FROM events").rows == [[199]]
        letters = store.reader.query("SELECT reason, raw FROM deadletter").rows
        assert len(letters) == 1 and "mallory-137" in letters[0][1]
        assert ParkingLot(tmp_path / "parked").pending == 0
    finally:
        store.close()


# -- agent: the publisher -------------------------------------------------------------------

@pytest.mark.kafka
def test_publisher_is_not_wedged_by_a_raw_bytes_event(tmp_path, kafka_bootstrap, kafka_topics):
    pub = KafkaPublisher({"bootstrap.servers": kafka_bootstrap}, kafka_topics.events, tmp_path / "spool", "fs1",
                         deadletter_topic=kafka_topics.deadletter)
    try:
        pub.publish([rename(0, "alice", "/srv/d/f{i}.csv.locked"), poison(1), rename(2, "alice", "/srv/x{i}")])
        pub.publish([rename(i, "alice", "/srv/d/f{i}.csv.locked") for i in range(3, 50)])
        assert pub.flush(30) == 0
    finally:
        pub.close()
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"t-{time.time_ns()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([kafka_topics.events])
    seen = {}
    deadline = time.monotonic() + 30
    while len(seen) < 50 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            ev = decode_event(msg.value())
            seen[ev.uid] = ev
    consumer.close()
    assert len(seen) == 50
    assert seen["mallory-1"].names_escaped
    assert name_bytes(seen["mallory-1"].file_new_path, True) == b"/srv/d/f1.csv.locked\xff"


def test_escaped_bytes_in_a_name_do_not_hide_its_extension():
    """The lossless form escapes a non-UTF-8 byte with a backslash; the detectors must not take
    that backslash for a Windows separator (that hid '.locked\\xff' from every rule)."""
    from dwcore.detectors.lists import base_name, extension, parent_dir

    escaped, _ = name_text(b"/srv/data/q1.csv.locked\xff")
    assert extension(escaped) == ".locked\\xff"
    assert base_name(escaped) == "q1.csv.locked\\xff" and parent_dir(escaped) == "/srv/data"
    assert extension("C:\\share\\q1.docx") == ".docx"  # a Windows path still splits on backslashes
