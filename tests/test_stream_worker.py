"""The batch worker and its changelog against a real broker: state recovered per partition, and a
worker that died after writing its state but before committing its offsets replays the batch
without counting an event twice or raising an alert again."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dwcore.detectors.policy import load_policy
from dwcore.schemas.codec import encode
from dwcore.schemas.event import Activity, make_event
from dwcore.stream.batch_worker import BatchWorker, WorkerSettings
from dwcore.stream.changelog import ChangelogState
from tests.procs import wait_for

pytestmark = [pytest.mark.kafka]


def _changelog(bootstrap: str, name: str, partitions: int) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(name, partitions, 1, config={"cleanup.policy": "compact"})
    for fut in admin.create_topics([topic], operation_timeout=30).values():
        fut.result(30)
    return name


def test_changelog_recovers_each_partitions_users_and_rereads_only_what_changed(kafka_bootstrap, topic_prefix):
    client = {"bootstrap.servers": kafka_bootstrap}
    topic = _changelog(kafka_bootstrap, f"{topic_prefix}state", 3)
    producer = Producer({**client, "acks": "all"})
    state = ChangelogState(client, topic, producer)
    state.write("alice", b"a1", 0)
    state.write("bob", b"b1", 1)
    state.write("bob", b"b2", 1)  # the later record wins
    state.write("caf\u00e9 \x1b[31m", b"c1", 1)  # a hostile user name is just a key
    assert producer.flush(30) == 0
    state.raise_failed()

    fresh = ChangelogState(client, topic)
    assert fresh.recover([1]) == 3
    assert fresh.values == {"bob": b"b2", "caf\u00e9 \x1b[31m": b"c1"}
    assert fresh.partition_of("bob") == 1

    # Another worker drops bob's state (a tombstone) while this one does not hold partition 1.
    producer.produce(topic, key=json.dumps("bob").encode(), value=None, partition=1)
    assert producer.flush(30) == 0
    assert state.recover([0]) == 0, "partition 0 did not change since this worker wrote it: no re-read"
    assert state.recover([1]) == 4
    assert "bob" not in state.values and state.values["caf\u00e9 \x1b[31m"] == b"c1"
    state.keep_only([1])
    assert "alice" not in state.values


def _renames(user: str, start_ms: int, first: int, count: int) -> list:
    return [make_event(Activity.RENAME, uid=uuid.uuid4().hex, time=start_ms + i * 5, user_name=user, device="fs1",
                       share="/srv/data", file_path=f"/srv/data/{user}/f{i:04d}.csv",
                       file_new_path=f"/srv/data/{user}/f{i:04d}.csv.locked")
            for i in range(first, first + count)]


def _produce(bootstrap: str, topic: str, events: list) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all"})
    for ev in events:
        producer.produce(topic, key=ev.user_name.encode(), value=encode(ev))
    assert producer.flush(30) == 0


def _alerts(bootstrap: str, topic: str) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out, idle = [], time.monotonic()
    try:
        while time.monotonic() - idle < 1.5:
            for msg in consumer.consume(500, timeout=0.3):
                if msg.error() is None:
                    out.append(json.loads(msg.value()))
                    idle = time.monotonic()
    finally:
        consumer.close()
    return out


class _Running:
    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "worker not assigned within 60 s"

    def _run(self) -> None:
        try:
            self.worker.run(self.stop, self.ready.set)
        except BaseException as exc:  # surfaced by the test
            self.error.append(exc)
            self.ready.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.error, self.error


def test_worker_dead_before_its_commit_replays_the_batch_without_counting_twice(
    kafka_bootstrap, kafka_topics, topic_prefix
):
    client = {"bootstrap.servers": kafka_bootstrap}
    settings = WorkerSettings(group=f"{topic_prefix}workers", changelog=_changelog(kafka_bootstrap,
                              f"{topic_prefix}state", 6), client_id="test-worker", session_timeout_s=6.0)
    policy = load_policy()
    start = int(time.time() * 1000)

    first = BatchWorker(client, kafka_topics, settings, policy)
    first._commit = lambda asynchronous: None  # type: ignore[method-assign]  # dies before every commit
    running = _Running(first)
    _produce(kafka_bootstrap, kafka_topics.events, _renames("mallory", start, 0, 120))
    wait_for(lambda: first.counters.received >= 120, 60, what="the first 120 renames processed")
    running.close()
    raised = [a for a in _alerts(kafka_bootstrap, kafka_topics.alerts) if a["user"] == "mallory"]
    assert raised, "the first worker raised no alert for 120 renames"
    assert first.counters.state_writes >= 1

    # A new worker (nothing in memory, no committed offsets) reads all 120 again, then the rest.
    second = BatchWorker(client, kafka_topics, settings, policy)
    running = _Running(second)
    assert second.counters.recovered >= 1, "the state was not recovered from the changelog"
    _produce(kafka_bootstrap, kafka_topics.events, _renames("mallory", start, 120, 80))
    later = make_event(Activity.CREATE, uid=uuid.uuid4().hex, time=start + 3_600_000, user_name="mallory",
                       device="fs1", share="/srv/data", file_path="/srv/data/mallory/notes.txt")
    _produce(kafka_bootstrap, kafka_topics.events, [later])

    def closed():
        got = [a for a in _alerts(kafka_bootstrap, kafka_topics.alerts) if a["user"] == "mallory"]
        return got if any(a["status"] == "closed" for a in got) else None

    alerts = wait_for(closed, 60, interval=0.5, what="the incident's closing version")
    running.close()
    assert second.counters.received == 201  # the 120 replayed, 80 new, the quiet event
    assert len({a["uid"] for a in alerts}) == 1, "the replay split the attack into two incidents"
    versions = [a["version"] for a in alerts]
    assert len(versions) == len(set(versions)), f"a version was raised twice: {sorted(versions)}"
    (final,) = [a for a in alerts if a["status"] == "closed"]
    assert final["file_count"] == 200, "a replayed rename was counted twice (or one was lost)"
    assert final["first_seen"] == start
