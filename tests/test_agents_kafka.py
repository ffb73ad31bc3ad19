"""Publisher, topic helper and file agent against a real Kafka broker."""
from __future__ import annotations

import os
import pwd
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from dataward.config import Config, load_config
from dataward.distributed import run_file_agent
from dwcore.agents.kafka_admin import ensure_topics
from dwcore.agents.publisher import KafkaPublisher
from dwcore.backoff import Backoff
from dwcore.schemas.codec import decode_event, encode
from dwcore.schemas.event import AccessEvent, Activity, make_event
from dwcore.schemas.topics import Topics

pytestmark = pytest.mark.kafka

USERS = ["alice", "bob", "carol", "dave", "eve", "mallory", "trent"]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java client Utils.murmur2), written from the algorithm's description."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def events(n: int, tag: str = "") -> list[AccessEvent]:
    return [
        make_event(Activity.UPDATE, uid=f"{tag}{uuid.uuid4().hex}", time=1_700_000_000_000 + i,
                   user_name=USERS[i % len(USERS)], device="fs01", file_path=f"/share/{tag}{i}.docx")
        for i in range(n)
    ]


def consume(bootstrap: str, topic: str, expect: int, timeout: float = 30.0, settle: float = 1.0):
    """Reads until ``expect`` messages arrived (then ``settle`` more seconds for duplicates)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in c.consume(num_messages=1000, timeout=0.2):
                if msg.error() is None:
                    got.append(msg)
            if len(got) >= expect:
                deadline = min(deadline, time.monotonic() + settle)
    finally:
        c.close()
    return got


def kcfg(bootstrap: str) -> dict[str, str]:
    return {"bootstrap.servers": bootstrap}


def publisher(bootstrap: str, topics: Topics, spool: Path, **kw) -> KafkaPublisher:
    return KafkaPublisher(kcfg(bootstrap), topics.events, spool, "fs01", deadletter_topic=topics.deadletter, **kw)


def test_5000_events_arrive_complete_and_keyed_by_user(kafka_bootstrap, kafka_topics, tmp_path):
    sent = events(5000)
    pub = publisher(kafka_bootstrap, kafka_topics, tmp_path / "spool")
    for i in range(0, len(sent), 1000):
        pub.publish(sent[i : i + 1000])
    assert pub.flush(30) == 0
    counters = pub.counters
    assert pub.close() == 0
    assert counters["acked"] == 5000 and counters["spooled_pending"] == 0 and counters["errors"] == 0
    assert list((tmp_path / "spool").glob("*.log")) == []  # acked segments are deleted

    got = consume(kafka_bootstrap, kafka_topics.events, 5000)
    decoded = [decode_event(m.value()) for m in got]
    assert sorted(e.uid for e in decoded) == sorted(e.uid for e in sent)
    for msg, ev in zip(got, decoded, strict=True):
        assert msg.key() == ev.user_name.encode()
        assert msg.partition() == java_partition(msg.key(), 6)


def test_dead_broker_spools_and_next_publisher_delivers_exactly_what_was_spooled(
        kafka_bootstrap, kafka_topics, tmp_path):
    spool_dir = tmp_path / "spool"
    sent = events(1200, tag="x")
    dead = publisher("127.0.0.1:1", kafka_topics, spool_dir)
    for i in range(0, len(sent), 400):
        dead.publish(sent[i : i + 400])
    assert dead.close(timeout=1) == 1200  # nothing acked, everything kept
    assert list(spool_dir.glob("*.log"))

    alive = publisher(kafka_bootstrap, kafka_topics, spool_dir)
    assert alive.flush(30) == 0
    assert alive.close() == 0
    got = consume(kafka_bootstrap, kafka_topics.events, 1200)
    assert sorted(m.value() for m in got) == sorted(encode(e) for e in sent)  # none missing, none extra


def test_partition_for_alice_matches_java_and_aiokafka_murmur2(kafka_bootstrap, kafka_topics, tmp_path):
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    expected = java_partition(b"alice", 6)
    assert expected == (aiokafka_murmur2(b"alice") & 0x7FFFFFFF) % 6
    pub = publisher(kafka_bootstrap, kafka_topics, tmp_path / "spool")
    ev = [e for e in events(7) if e.user_name == "alice"]
    pub.publish(ev)
    assert pub.close() == 0
    got = consume(kafka_bootstrap, kafka_topics.events, 1)
    assert [m.partition() for m in got] == [expected]
    # librdkafka's own default (consistent_random, crc32) would be a different function entirely:
    assert all(java_partition(u.encode(), 6) == (aiokafka_murmur2(u.encode()) & 0x7FFFFFFF) % 6 for u in USERS)


class Proxy:
    """A TCP forwarder to the broker that can be switched on later: "the broker comes back"."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # nothing listens here until start(): connections are refused
        self._server: socket.socket | None = None

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def test_events_published_while_broker_is_away_go_out_when_it_returns(kafka_bootstrap, kafka_topics, tmp_path):
    proxy = Proxy(kafka_bootstrap)
    # Short timeouts so deliveries fail while the broker is away and the spool resend path runs.
    pub = publisher(f"127.0.0.1:{proxy.port}", kafka_topics, tmp_path / "spool",
                         producer_overrides={"message.timeout.ms": 1000, "reconnect.backoff.max.ms": 500},
                         backoff=Backoff(0.2, 0.2))
    sent = events(600)
    try:
        pub.publish(sent[:300])
        deadline = time.monotonic() + 10
        while pub.counters["errors"] < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.counters["errors"] >= 300 and pub.pending == 300  # failed, still spooled
        pub.publish(sent[300:])
        proxy.start()
        assert pub.flush(30) == 0
        assert pub.counters["resent"] >= 300
    finally:
        pub.close(timeout=1)
        proxy.stop()
    got = consume(kafka_bootstrap, kafka_topics.events, 600)
    assert {m.value() for m in got} == {encode(e) for e in sent}


def test_ensure_topics_is_idempotent(kafka_bootstrap, topic_prefix):
    names = [f"{topic_prefix}a", f"{topic_prefix}b"]
    assert sorted(ensure_topics(kcfg(kafka_bootstrap), names, 6)) == names
    assert ensure_topics(kcfg(kafka_bootstrap), names, 6) == []
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert len(md.topics[names[0]].partitions) == 6


def test_message_kafka_refuses_goes_to_the_deadletter_topic_with_reason(kafka_bootstrap, kafka_topics, tmp_path):
    pub = publisher(kafka_bootstrap, kafka_topics, tmp_path / "spool",
                    producer_overrides={"message.max.bytes": 2000})
    big = make_event(Activity.CREATE, uid="big", time=1, user_name="alice", device="fs01",
                     file_path="/share/" + "x" * 3000)
    pub.publish([big, *events(3)])
    assert pub.flush(20) == 0  # settled: the refused record left the spool only once its dead letter was acked
    counters = pub.counters
    pub.close()
    assert counters["rejected"] == 1 and counters["acked"] == 3 and counters["lost"] == 0
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # nothing parked beside the spool any more
    from dwcore.schemas.codec import decode_deadletter

    (msg,) = consume(kafka_bootstrap, kafka_topics.deadletter, 1)
    letter = decode_deadletter(msg.value())
    assert msg.key() == b"alice" and letter.key == b"alice" and letter.source == "agent:fs01"
    assert letter.reason.startswith(f"kafka refused the message on {kafka_topics.events}: ")
    assert "message size too large" in letter.reason.lower()
    # cut so that the dead letter fits where the record did not, and said so
    assert "raw cut to its first 256 of" in letter.reason and len(letter.raw) == 256
    assert encode(big).startswith(letter.raw)
    assert len(consume(kafka_bootstrap, kafka_topics.events, 3)) == 3


def test_file_agent_publishes_file_activity(kafka_bootstrap, topic_prefix, tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    config = load_config(overrides={"data_dir": str(tmp_path / "data"),
                                    "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix},
                                    "agent": {"device": "fs01"}}, env={})
    assert isinstance(config, Config)
    stop, ready = threading.Event(), threading.Event()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        run_file_agent(config, [str(share)], stop, ready.set, tune_inotify=False)))
    t.start()
    try:
        assert ready.wait(30)
        for i in range(50):
            (share / f"doc{i}.txt").write_text("hello")
        (share / "doc0.txt").rename(share / "doc0.txt.enc")
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive()
    assert result["publisher_spooled_pending"] == 0
    got = [decode_event(m.value()) for m in consume(kafka_bootstrap, f"{topic_prefix}dw.events", 51)]
    creates = {Path(e.file_path).name for e in got if e.activity_id == Activity.CREATE}
    assert creates == {f"doc{i}.txt" for i in range(50)}
    assert [e.file_new_path for e in got if e.activity_id == Activity.RENAME] == [str(share / "doc0.txt.enc")]
    me = pwd.getpwuid(os.getuid()).pw_name  # the owner of the files the test wrote
    assert all(e.device == "fs01" and e.user_name == me for e in got)
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert len(md.topics[f"{topic_prefix}dw.events"].partitions) == config.kafka.partitions


def test_plain_producer_default_partitioner_differs(kafka_bootstrap, kafka_topics):
    """Guards the reason for partitioner=murmur2_random: librdkafka's default puts some keys elsewhere."""
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    parts: dict[str, int] = {}
    for u in USERS:
        p.produce(kafka_topics.events, key=u.encode(), value=b"{}",
                  on_delivery=lambda err, msg: parts.__setitem__(msg.key().decode(), msg.partition()))
    p.flush(10)
    assert any(parts[u] != java_partition(u.encode(), 6) for u in USERS)
