"""The sink against a real Kafka broker and chDB: exact counts whatever the replay, through a hard
kill and through a store outage longer than max.poll.interval.ms; custody chains that name the
block a hand edit altered; anchors in an object-locked bucket; hostile strings stored verbatim."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import boto3
import pytest
from confluent_kafka import Consumer, Producer

from dwcore.schemas.codec import encode
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks import query_client
from dwcore.sinks.anchor import check_anchors
from dwcore.sinks.consumer_config import consumer_config
from dwcore.sinks.custody import Sealer, verify
from dwcore.sinks.errors import StoreUnavailable
from dwcore.sinks.kafka_sink import ClickHouseSink, run_sink_loop
from dwcore.sinks.store import Store
from dwcore.sinks.store_writer import StoreWriter
from tests.procs import run_cli, wait_for

pytestmark = pytest.mark.kafka

NOW = time.time_ns() // 1_000_000 - 3600_000
HOSTILE_PATH = "/srv/x/it's \"q\" \\back\\slash\nnew'; DROP TABLE events; --.csv"
HOSTILE_USER = "o'brien\\\"; DROP TABLE alerts; --"


def event(i: int, user: str | None = None, path: str | None = None):
    return make_event(Activity.UPDATE, uid=f"e{i:06d}", time=NOW + i, user_name=user or f"user{i % 7}",
                      device="fs1", file_path=path or f"/srv/data/{i}.bin", bytes_written=i)


def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in values:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def events_payload(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"user{i % 7}".encode(), encode(event(i))) for i in range(start, start + n)]


def counts(store: Store) -> list[int]:
    q = "SELECT count(), uniqExact(uid), (SELECT count() FROM deadletter) FROM events"
    return store.reader.query(q).rows[0]


def drain(store: Store, topics, bootstrap: str, group: str, batch_rows: int, expect: int,
          writer: StoreWriter | None = None) -> ClickHouseSink:
    """One sink in ``group`` until it has received ``expect`` messages and stored them all."""
    consumer = Consumer(consumer_config({"bootstrap.servers": bootstrap}, group))
    sink = ClickHouseSink(writer or store.writer, topics, consumer, threading.Event(), batch_rows=batch_rows,
                          flush_interval_s=0.2, sealer=Sealer(writer or store.writer, 0.5))
    consumer.subscribe([topics.events, topics.alerts, topics.deadletter], on_assign=sink.on_assign,
                       on_revoke=sink.on_revoke)
    try:
        deadline = time.monotonic() + 90
        while not (sink.counters.received >= expect and sink.pending_rows == 0):
            assert time.monotonic() < deadline, f"received {sink.counters.received} of {expect}"
            sink.poll(0.2)
        sink.sealer.tick(force=True)
    finally:
        consumer.close()
    return sink


def test_replay_with_other_batch_boundaries_stores_each_message_once(tmp_path, kafka_bootstrap, kafka_topics):
    topics = kafka_topics
    hostile = make_event(Activity.RENAME, uid="hostile", time=NOW, user_name=HOSTILE_USER, device="fs'1",
                         file_path=HOSTILE_PATH, file_new_path=HOSTILE_PATH + ".locked")
    bad = [(b"user1", b"not json"), (b"user2", b'{"uid": 3}'), (b"user3", b"")]
    produce(kafka_bootstrap, topics.events, events_payload(3000) + bad + [(b"x", encode(hostile))])
    with Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=400) as store:
        store.writer.ensure_schema()
        first = drain(store, topics, kafka_bootstrap, "g1", batch_rows=700, expect=3004)
        assert counts(store) == [3001, 3001, 3]
        assert first.counters.deadlettered == 3 and first.guard.skipped == 0
        # The same messages again, read by a new group from the start, cut into other batches.
        second = drain(store, topics, kafka_bootstrap, "g2", batch_rows=333, expect=3004)
        assert counts(store) == [3001, 3001, 3]
        assert second.guard.skipped == 3004 and second.counters.inserted_into("events") == 0
        reasons = store.reader.query("SELECT reason FROM deadletter ORDER BY _src, _offset").rows
        assert all(r[0].startswith("sink decode") for r in reasons)
        # A quote, backslashes, a newline and '; DROP: stored verbatim, through Kafka and the sink.
        row = store.reader.query("SELECT user_name, device, file_path, file_new_path FROM events "
                                 "WHERE uid = 'hostile'").rows
        assert row == [[HOSTILE_USER, "fs'1", HOSTILE_PATH, HOSTILE_PATH + ".locked"]]
        chains = verify(store.writer.rows)
    assert len(chains) > 1 and all(c.first_problem is None and c.unsealed_rows == 0 for c in chains)
    assert sum(c.rows for c in chains) == 3001
    # and the analyst's report shows it the same way
    out = run_cli("report", "custody", HOSTILE_PATH, "-f", "json", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["tables"][f"custody of {HOSTILE_PATH}"]
    assert [(r["user_name"], r["path"]) for r in rows] == [(HOSTILE_USER, HOSTILE_PATH)]


def test_custody_verify_names_the_altered_and_the_missing_block(tmp_path, kafka_bootstrap, kafka_topics,
                                                                s3_bucket, moto_endpoint):
    topics = kafka_topics
    produce(kafka_bootstrap, topics.events, [(b"k", encode(event(i))) for i in range(100)])
    produce(kafka_bootstrap, topics.events, [(b"k", encode(event(i))) for i in range(100, 200)])
    with Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=400) as store:
        store.writer.ensure_schema()
        drain(store, topics, kafka_bootstrap, "g", batch_rows=100, expect=100)
        drain(store, topics, kafka_bootstrap, "g", batch_rows=100, expect=100)
        blocks = store.reader.query("SELECT stream, seq, first_offset, last_offset, rows FROM custody_blocks").rows
    (stream, _, _, _, _), = {tuple(b[:1]) + (0, 0, 0, 0) for b in blocks}
    assert sorted((b[1], b[2], b[3], b[4]) for b in blocks) == [(1, 0, 99, 100), (2, 100, 199, 100)]
    data = ["--data-dir", str(tmp_path)]
    bucket = s3_bucket(object_lock=True)
    s3 = ["--endpoint-url", moto_endpoint]
    assert run_cli("custody", "anchor", "--bucket", bucket, "--days", "1", *s3, *data).returncode == 0
    ok = run_cli("custody", "verify", "--anchor-bucket", bucket, *s3, "-f", "json", *data)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)[0]["status"] == "ok" and "1 anchors checked: ok" in ok.stderr

    # A row altered by hand in the second block: verify fails and names block 2.
    with Store.open(f"chdb://{tmp_path / 'chdb'}") as store:
        store.writer.command("ALTER TABLE dataward.events UPDATE file_path = '/innocent' WHERE uid = 'e000150' "
                             "SETTINGS mutations_sync = 2")
    bad = run_cli("custody", "verify", "-f", "json", *data)
    assert bad.returncode == 1
    found = json.loads(bad.stdout)[0]
    assert (found["stream"], found["status"], found["first_bad_block"], found["problem"]) == (
        stream, "FAILED", 2, "rows altered")

    # A whole chain rebuilt by someone with write access still fails against the anchor.
    with Store.open(f"chdb://{tmp_path / 'chdb'}") as store:
        store.writer.command("TRUNCATE TABLE dataward.custody_blocks")
        sealer = Sealer(store.writer)
        sealer.stored(stream, 199)
        sealer.tick(force=True)
        assert verify(store.writer.rows)[0].first_problem is None  # consistent in itself...
        checked, mismatches = check_anchors(store.writer.rows, boto3.client("s3", endpoint_url=moto_endpoint),
                                            bucket)
        assert checked == 1 and [(m.seq, m.in_store != m.anchored) for m in mismatches] == [(2, True)]

        # A deleted row, and a deleted block.
        store.writer.command("TRUNCATE TABLE dataward.custody_blocks")
        sealer = Sealer(store.writer)
        for upto in (99, 199):
            sealer.stored(stream, upto)
            sealer.tick(force=True)
        store.writer.command("ALTER TABLE dataward.events DELETE WHERE uid = 'e000007' SETTINGS mutations_sync = 2")
        first = verify(store.writer.rows)[0].first_problem
        assert (first.seq, first.problem) == (1, "rows altered") and "99 rows" in first.detail
        store.writer.command("ALTER TABLE dataward.custody_blocks DELETE WHERE seq = 1 SETTINGS mutations_sync = 2")
        first = verify(store.writer.rows)[0].first_problem
        assert (first.seq, first.problem) == (1, "block missing")


def test_kill_mid_batch_then_restart_counts_exact(tmp_path, kafka_bootstrap, kafka_topics, dataward_proc):
    topics = kafka_topics
    prefix = topics.events[: -len("dw.events")]
    total = 12_000
    produce(kafka_bootstrap, topics.events, events_payload(total))
    env = {"DATAWARD_STORE_BATCH_ROWS": "600", "DATAWARD_STORE_FLUSH_INTERVAL_S": "0.1",
           "DATAWARD_STORE_SEAL_INTERVAL_S": "0.2", "DATAWARD_KAFKA_SESSION_TIMEOUT_MS": "6000"}
    args = ("sink", "clickhouse", "--data-dir", str(tmp_path), "--topic-prefix", prefix)
    addr = tmp_path / "query.addr"

    def stored() -> int:
        try:
            return query_client.run_query("SELECT count() FROM events", dsn=f"chdb://{tmp_path / 'chdb'}",
                                          database="dataward", addr_file=addr).rows[0][0]
        except Exception:
            return 0

    sink = dataward_proc(*args, env=env)
    sink.wait_ready()
    wait_for(lambda: 0 < stored() < total, timeout=60, interval=0.02, what="the first batches")
    os.kill(sink.proc.pid, signal.SIGKILL)  # mid-stream: batches inserted, some not yet committed
    sink.proc.wait(10)
    killed_at = stored()
    restarted = dataward_proc(*args, env=env)
    restarted.wait_ready()
    wait_for(lambda: stored() == total, timeout=120, what=f"all {total} rows (had {killed_at} at the kill)")
    restarted.stop()
    with Store.open(f"chdb://{tmp_path / 'chdb'}") as store:
        assert counts(store) == [total, total, 0]
        chains = verify(store.writer.rows)
    assert all(c.first_problem is None for c in chains) and sum(c.rows for c in chains) == total


class Outage:
    """The real chDB backend behind a switch: while ``down`` every call fails the way an unreachable
    store does (StoreUnavailable), as a server restart or a network cut would."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.down = False
        self.refused = 0

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            raise StoreUnavailable("connection refused (store down)")

    def insert(self, *args):
        self._check()
        return self.backend.insert(*args)

    def read(self, *args):
        self._check()
        return self.backend.read(*args)

    def command(self, sql):
        self._check()
        return self.backend.command(sql)


def test_store_outage_longer_than_max_poll_interval_keeps_the_group(tmp_path, kafka_bootstrap, kafka_topics):
    topics = kafka_topics
    max_poll_ms = 7000
    with Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=400) as store:
        store.writer.ensure_schema()
        outage = Outage(store._backend)
        writer = StoreWriter(outage, store.database, 400, store.label)
        conf = consumer_config({"bootstrap.servers": kafka_bootstrap}, "g-outage")
        conf.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                     "max.poll.interval.ms": max_poll_ms})
        consumer = Consumer(conf)
        stop = threading.Event()
        sink = ClickHouseSink(writer, topics, consumer, stop, batch_rows=500, flush_interval_s=0.1,
                              sealer=Sealer(writer, 0.2))
        # The group's view, seen from the loop thread's own callbacks: the test thread makes no
        # consumer call while the loop runs (confluent-kafka serializes calls on one handle, and a
        # caller waiting on another thread that polls without pause can wait for ever).
        revoked: list[int] = []
        assigned: list[list[tuple[str, int]]] = []

        def on_assign(cons, parts):
            assigned.append(sorted((tp.topic, tp.partition) for tp in parts))
            sink.on_assign(cons, parts)

        def on_revoke(cons, parts):
            revoked.append(len(parts))
            sink.on_revoke(cons, parts)

        consumer.subscribe([topics.events, topics.alerts, topics.deadletter], on_assign=on_assign,
                           on_revoke=on_revoke, on_lost=on_revoke)
        loop = threading.Thread(target=run_sink_loop, args=(sink, consumer, stop, lambda: None), daemon=True)
        loop.start()
        try:
            produce(kafka_bootstrap, topics.events, events_payload(1000))
            wait_for(lambda: counts(store)[0] == 1000, timeout=60, what="the first 1000 rows")
            assert len(assigned) == 1 and assigned[0]
            outage.down = True
            produce(kafka_bootstrap, topics.events, events_payload(1000, start=1000))
            wait_for(lambda: sink.paused, timeout=30, what="backpressure")
            # The outage outlasts max.poll.interval.ms: a sink blocked in its retry would be evicted.
            assert not stop.wait(max_poll_ms / 1000 * 1.5)
            assert sink.paused and outage.refused > 1 and counts(store)[0] == 1000
            outage.down = False
            wait_for(lambda: counts(store)[0] == 2000, timeout=60, what="catching up")
            # Never evicted: no partition revoked or lost, and no second assignment (a rejoin).
            assert revoked == [] and len(assigned) == 1
        finally:
            stop.set()
            loop.join(30)
            consumer.close()
        assert counts(store) == [2000, 2000, 0] and not sink.paused
        assert all(c.first_problem is None for c in verify(store.writer.rows))
