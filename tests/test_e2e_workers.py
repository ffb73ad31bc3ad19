"""Workers as a group: three `dataward worker` processes on 12 partitions lose one to kill -9 in the
middle of an attack. Its partitions and the users' state (the changelog) move to the others; the
attack is one incident whose first event is the attack's first rename and whose count is exact."""
from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dwcore.schemas.codec import encode
from dwcore.schemas.event import Activity, make_event
from dwcore.schemas.topics import Topics
from tests.procs import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka]

PARTITIONS = 12


def _renames(user: str, start_ms: int, first: int, count: int) -> list:
    return [
        make_event(Activity.RENAME, uid=uuid.uuid4().hex, time=start_ms + i * 5, user_name=user, device="fs1",
                   share="/srv/data", file_path=f"/srv/data/{user}/f{i:04d}.csv",
                   file_new_path=f"/srv/data/{user}/f{i:04d}.csv.locked")
        for i in range(first, first + count)
    ]


def _produce(bootstrap: str, topic: str, events: list) -> set[int]:
    partitions: set[int] = set()

    def delivered(err, msg):
        assert err is None, err
        partitions.add(msg.partition())

    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all"})
    for ev in events:
        producer.produce(topic, key=ev.user_name.encode(), value=encode(ev), on_delivery=delivered)
    assert producer.flush(30) == 0
    return partitions


def _owner_pid(bootstrap: str, group: str, topic: str, partition: int) -> int | None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    for member in desc.members:
        parts = member.assignment.topic_partitions if member.assignment else []
        if any(tp.topic == topic and tp.partition == partition for tp in parts):
            return int(member.client_id.rsplit("-", 1)[1])
    return None


def _alerts(bootstrap: str, topic: str) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out, idle = [], time.monotonic()
    try:
        while time.monotonic() - idle < 2.0:
            for msg in consumer.consume(500, timeout=0.3):
                if msg.error() is None:
                    out.append(json.loads(msg.value()))
                    idle = time.monotonic()
    finally:
        consumer.close()
    return out


def test_three_workers_lose_one_mid_attack_and_the_incident_stays_whole(
    tmp_path, kafka_bootstrap, topic_prefix, dataward_proc
):
    topics = Topics.with_prefix(topic_prefix)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    wanted = [NewTopic(topics.events, PARTITIONS, 1), NewTopic(topics.alerts, 1, 1), NewTopic(topics.deadletter, 1, 1)]
    for fut in admin.create_topics(wanted, operation_timeout=30).values():
        fut.result(30)
    env = {"DATAWARD_KAFKA_PARTITIONS": str(PARTITIONS)}
    workers = [dataward_proc("worker", "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix,
                             "--data-dir", str(tmp_path / f"w{i}"), env=env) for i in range(3)]
    for w in workers:
        w.wait_ready(120)
    group = f"dataward-worker-{topic_prefix}".rstrip(".")

    def settled():  # all three members own partitions
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        return len(desc.members) == 3 and all(m.assignment and m.assignment.topic_partitions for m in desc.members)

    wait_for(settled, 60, interval=0.5, what="three workers sharing the partitions")

    # The first part of the attack, processed by the worker that owns mallory's partition.
    start = int(time.time() * 1000)
    (partition,) = _produce(kafka_bootstrap, topics.events, _renames("mallory", start, 0, 20))
    owner = _owner_pid(kafka_bootstrap, group, topics.events, partition)
    assert owner in {w.proc.pid for w in workers}

    def consumed():
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            from confluent_kafka import TopicPartition

            (tp,) = consumer.committed([TopicPartition(topics.events, partition)], timeout=10)
            return tp.offset >= 20
        finally:
            consumer.close()

    wait_for(consumed, 60, interval=0.3, what="the first 20 renames processed and committed")

    os.kill(owner, signal.SIGKILL)
    # The rest of the attack, while the group notices the loss and moves the partition.
    _produce(kafka_bootstrap, topics.events, _renames("mallory", start, 20, 280))
    # An hour later mallory does something ordinary: the incident is quiet past every cooldown, so
    # the worker closes it with its final counts (time comes from events, never from a clock).
    later = make_event(Activity.CREATE, uid=uuid.uuid4().hex, time=start + 3_600_000, user_name="mallory",
                       device="fs1", share="/srv/data", file_path="/srv/data/mallory/notes.txt")
    _produce(kafka_bootstrap, topics.events, [later])

    def incident_complete():
        got = [a for a in _alerts(kafka_bootstrap, topics.alerts) if a["user"] == "mallory"]
        return got if any(a["status"] == "closed" for a in got) else None

    alerts = wait_for(incident_complete, 120, interval=1.0, what="the attack's incident, closed")
    assert len({a["uid"] for a in alerts}) == 1, "the attack split into several incidents"
    # The state from before the kill survived: the incident starts at the attack's first rename.
    assert min(a["first_seen"] for a in alerts) == start
    closed = [a for a in alerts if a["status"] == "closed"]
    assert len(closed) == 1, closed
    # The renames before the kill are in the incident (its first_seen above, and the count): a
    # takeover that lost the dead worker's state would start a new incident at the 21st rename.
    # One CI run counted 299 of the 300: the new owner, working through the backlog a minute
    # after the attack, closed the incident by the wall clock before its last rename was processed
    # (fixed: while behind, quiet is judged by the newest event processed; see quiet_clock).
    assert closed[0]["file_count"] == 300, closed
    versions = [a["version"] for a in alerts]
    assert len(versions) == len(set(versions)), f"an alert version was emitted twice: {sorted(versions)}"
    survivors = [w for w in workers if w.proc.pid != owner]
    assert all(w.proc.poll() is None for w in survivors)


def test_two_sinks_in_one_group_share_partitions_and_store_each_row_once(
    tmp_path, kafka_bootstrap, kafka_topics, topic_prefix, dataward_proc
):
    """Each sink here owns its own embedded store (one process per chDB directory), so the union of
    the two stores is what a shared server would hold: every event in exactly one of them."""
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix]
    dirs = [tmp_path / "sink-a", tmp_path / "sink-b"]
    sinks = [dataward_proc("sink", "clickhouse", *common, "--data-dir", str(d)) for d in dirs]
    for sink in sinks:
        sink.wait_ready(90)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    group = f"{topic_prefix}dataward-sink"

    def both_assigned():
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        owned = [
            {tp.partition for tp in m.assignment.topic_partitions if tp.topic == kafka_topics.events}
            for m in desc.members if m.assignment
        ]
        return len(owned) == 2 and all(owned) and not (owned[0] & owned[1])

    wait_for(both_assigned, 60, interval=0.5, what="two sinks sharing the events partitions")
    start = int(time.time() * 1000)
    events = [make_event(Activity.CREATE, uid=uuid.uuid4().hex, time=start + i, user_name=f"user{i % 40}",
                         device="fs1", file_path=f"/srv/data/u{i % 40}/f{i}.txt") for i in range(3000)]
    _produce(kafka_bootstrap, kafka_topics.events, events)
    from tests.procs import run_cli

    def uids(data_dir) -> list[str]:
        res = run_cli("query", "SELECT uid FROM events", "--data-dir", str(data_dir), "--format", "json")
        assert res.returncode == 0, res.stderr
        return [r["uid"] for r in json.loads(res.stdout)]

    def stored():
        got = [uids(d) for d in dirs]
        return got if sum(map(len, got)) >= len(events) else None

    a, b = wait_for(stored, 60, interval=1.0, what="every event stored by one of the sinks")
    assert a and b, "one sink stored nothing: the partitions were not shared"
    assert len(a) + len(b) == len(events), "an event was stored twice"
    assert set(a) | set(b) == {e.uid for e in events}
    assert not set(a) & set(b)
    for sink in sinks:
        assert sink.stop() == 0


def test_oversized_bad_message_gives_one_dead_letter_row_with_size_and_prefix(
    tmp_path, kafka_bootstrap, topic_prefix, dataward_proc
):
    """A 2 MB message that is not an event: the worker's dead letter is published (a bounded prefix
    keeps it under the dead-letter topic's limit) and the store ends up with exactly one row for it,
    carrying the reason, the original size and the first bytes."""
    topics = Topics.with_prefix(topic_prefix)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    big = {"max.message.bytes": str(4 * 1024 * 1024)}
    wanted = [NewTopic(topics.events, 2, 1, config=big), NewTopic(topics.alerts, 1, 1),
              NewTopic(topics.deadletter, 1, 1)]
    for fut in admin.create_topics(wanted, operation_timeout=30).values():
        fut.result(30)
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix]
    sink = dataward_proc("sink", "clickhouse", *common, "--data-dir", str(tmp_path / "sink"))
    worker = dataward_proc("worker", *common, "--data-dir", str(tmp_path / "worker"))
    for proc in (sink, worker):
        proc.wait_ready(120)
    payload = b"{" + b"A" * (2 * 1024 * 1024)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4 * 1024 * 1024})
    producer.produce(topics.events, key=b"mallory", value=payload)
    assert producer.flush(30) == 0

    def published():
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([topics.deadletter])
        try:
            return [json.loads(m.value()) for m in consumer.consume(10, timeout=3) if m.error() is None]
        finally:
            consumer.close()

    letters = wait_for(published, 60, interval=0.5, what="the worker's dead letter on the topic")
    assert letters[0]["size"] == len(payload) and letters[0]["truncated"] is True
    from tests.procs import run_cli

    def rows():
        res = run_cli("query", "SELECT reason, size, truncated, length(raw) AS kept FROM deadletter",
                      "--data-dir", str(tmp_path / "sink"), "--format", "json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout) or None

    got = wait_for(rows, 60, interval=1.0, what="the dead letter in the store")
    time.sleep(3)  # the worker's copy, read from the dead-letter topic, must not add a second row
    got = rows()
    assert len(got) == 1, got
    assert got[0]["size"] == len(payload)
    assert got[0]["truncated"] in (1, True) and 0 < got[0]["kept"] <= 256 * 1024
    assert "invalid event" in got[0]["reason"]
    for proc in (worker, sink):
        assert proc.stop() == 0
