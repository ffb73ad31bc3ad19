"""The store's disk fills up (a real small tmpfs mounted under the chDB directory): the sink and
the embedded mode raise one store_disk_full alarm, refuse and drop nothing, and store every event
exactly once when space returns (the tmpfs remounted larger), proven by counts.

Mounting needs root: a non-root developer gets a clean skip saying so."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from dataward.config import AgentConfig, Config, StoreConfig
from dataward.embedded import EmbeddedPipeline
from dataward.store_alarm import ALARM_STORE_DISK_FULL
from dwcore.detectors.policy import load_policy
from dwcore.schemas.codec import decode_event, encode
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks import query_client
from tests.procs import wait_for

SMALL = "6m"  # the schema plus ~10k of these events; then NOT_ENOUGH_SPACE
LARGE = "256m"
WAVE = 3000
MAX_WAVES = 40
NOW = time.time_ns() // 1_000_000 - 3600_000


@pytest.fixture
def small_fs():
    """mount(dir) puts a SMALL tmpfs at ``dir``; grow() remounts it LARGE (space returns)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a small tmpfs under the store's directory")
    mounted: list[Path] = []

    def mount(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL},mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"mount is not permitted here: {out.stderr.strip()}")
        mounted.append(path)

    def grow() -> None:
        for path in mounted:
            subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(path)], check=True)

    yield mount, grow
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def wave(start: int, n: int = WAVE) -> list:
    # Random path text, so that compression cannot make the disk last forever.
    return [make_event(Activity.UPDATE, uid=f"e{i:07d}", time=NOW + i, user_name=f"user{i % 13}", device="fs1",
                       file_path=f"/srv/data/{os.urandom(24).hex()}/{i}.bin", bytes_written=i)
            for i in range(start, start + n)]


def test_sink_pauses_raises_one_alarm_and_stores_everything_once_space_returns(
        tmp_path, small_fs, kafka_bootstrap, kafka_topics, dataward_proc):
    mount, grow = small_fs
    topics = kafka_topics
    prefix = topics.events[: -len("dw.events")]
    data = tmp_path / "data"
    mount(data / "chdb")
    env = {"DATAWARD_STORE_BATCH_ROWS": "2000", "DATAWARD_STORE_FLUSH_INTERVAL_S": "0.1",
           "DATAWARD_AGENT_DEVICE": "sink01"}
    sink = dataward_proc("sink", "clickhouse", "--data-dir", str(data), "--topic-prefix", prefix, env=env)
    sink.wait_ready()

    def query(sql: str) -> list:
        return query_client.run_query(sql, dsn=f"chdb://{data / 'chdb'}", database="dataward",
                                      addr_file=data / "query.addr").rows

    alarms = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g{uuid.uuid4().hex}",
                       "auto.offset.reset": "earliest", "enable.auto.commit": False})
    alarms.subscribe([topics.events])
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    seen_alarms: list = []

    def poll_alarms(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in alarms.consume(num_messages=5000, timeout=0.2):
                if m.error() is None:
                    ev = decode_event(m.value())
                    if ev.alarm:
                        seen_alarms.append(ev)
            if seen_alarms:
                return True
        return False

    sent = 0
    try:
        for _ in range(MAX_WAVES):
            for ev in wave(sent):
                producer.produce(topics.events, key=ev.user_name.encode(), value=encode(ev))
            assert producer.flush(30) == 0
            sent += WAVE
            if poll_alarms(3.0):
                break
        assert seen_alarms, f"no store_disk_full alarm after {sent} events on a {SMALL} store"
        # Accepted while the disk is full: more events arrive and wait in Kafka.
        for ev in wave(sent):
            producer.produce(topics.events, key=ev.user_name.encode(), value=encode(ev))
        assert producer.flush(30) == 0
        sent += WAVE
        assert not poll_alarms(3.0) or len(seen_alarms) == 1  # one alarm per episode, not one per retry
        stored_while_full = query("SELECT count() FROM events")[0][0]
        assert 0 < stored_while_full < sent
        assert query("SELECT count() FROM deadletter")[0][0] == 0  # a full disk refuses no row
        assert sink.proc.poll() is None
        grow()
        wait_for(lambda: query("SELECT count() FROM events WHERE alarm IS NULL")[0][0] == sent, timeout=120,
                 interval=0.5, what=f"all {sent} events stored after space returned")
    finally:
        alarms.close()
    (alarm,) = seen_alarms
    assert alarm.alarm == ALARM_STORE_DISK_FULL and alarm.device == "sink01"
    assert "disk is full" in (alarm.message or "") and "nothing is dropped" in (alarm.message or "")
    wait_for(lambda: query("SELECT count() FROM events WHERE alarm = 'store_disk_full'")[0][0] == 1, timeout=60,
             what="the alarm event stored too")
    assert query("SELECT count(), uniqExact(uid) FROM events WHERE alarm IS NULL") == [[sent, sent]]
    assert query("SELECT count() FROM deadletter") == [[0]]
    assert sink.stop() == 0
    log = sink.log_path.read_text()
    assert "store_disk_full" in log and "store_disk_space_returned" in log


def test_embedded_raises_an_alert_holds_every_event_and_stores_them_when_space_returns(tmp_path, small_fs):
    mount, grow = small_fs
    data, watch = tmp_path / "data", tmp_path / "watch"
    watch.mkdir()
    mount(data / "chdb")
    config = Config(data_dir=str(data), agent=AgentConfig(device="fs-embedded"),
                    store=StoreConfig(batch_rows=2000, flush_interval_s=0.1))
    alerts: list = []
    pipe = EmbeddedPipeline(config, load_policy(), [str(watch)], on_alert=alerts.append)
    pipe.start()
    try:
        store = pipe.store
        assert store is not None

        def stored() -> int:
            return store.reader.query("SELECT count() FROM events WHERE alarm IS NULL").rows[0][0]

        def disk_alarms() -> list:
            return [a for a in alerts if a.rule == "agent_alarm" and ALARM_STORE_DISK_FULL in a.description]

        sent = 0
        for _ in range(MAX_WAVES):
            pipe.publish(wave(sent))
            sent += WAVE
            try:
                wait_for(disk_alarms, timeout=3.0, interval=0.1)
                break
            except AssertionError:
                continue
        assert disk_alarms(), f"no store_disk_full alert after {sent} events on a {SMALL} store"
        pipe.publish(wave(sent))  # accepted while full: held, not dropped
        sent += WAVE
        wait_for(lambda: pipe.events_processed >= sent, timeout=30, what="every event through detection")
        assert stored() < sent
        assert store.reader.query("SELECT count() FROM deadletter").rows[0][0] == 0
        grow()
        wait_for(lambda: stored() == sent, timeout=120, interval=0.5,
                 what=f"all {sent} events stored after space returned")
        rows = store.reader.query("SELECT count(), uniqExact(uid) FROM events WHERE alarm IS NULL").rows
        assert rows == [[sent, sent]]
        assert store.reader.query("SELECT count() FROM deadletter").rows[0][0] == 0
        assert len({a.uid for a in disk_alarms()}) == 1  # one incident for the episode
    finally:
        pipe.stop()


@pytest.mark.parametrize("exc", [
    RuntimeError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)"),
    RuntimeError("Code: 74. DB::ErrnoException: Cannot write to file /d/tmp_insert/data.bin, errno: 28, "
                 "strerror: No space left on device. (CANNOT_WRITE_TO_FILE_DESCRIPTOR)"),
    OSError(28, "No space left on device"),
])
def test_a_full_disk_is_retriable_never_a_refusal(exc):
    from dwcore.sinks.chbackend import classify
    from dwcore.sinks.errors import StoreDiskFull

    kind = classify(exc, "insert into events")
    assert isinstance(kind, StoreDiskFull) and kind.retriable


def test_a_bad_row_is_still_a_refusal():
    from dwcore.sinks.chbackend import classify
    from dwcore.sinks.errors import StoreError

    kind = classify(RuntimeError("Code: 53. DB::Exception: Type mismatch (TYPE_MISMATCH)"), "insert")
    assert isinstance(kind, StoreError) and not kind.retriable
