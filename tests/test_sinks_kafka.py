"""Kafka -> ClickHouse sink: one batch at a time with fakes, then the whole loop on a real broker."""
from __future__ import annotations

import threading
import time

import msgspec
import pytest
from confluent_kafka import Producer

from dataward.config import Config, KafkaConfig, StoreConfig
from dataward.distributed import run_clickhouse_sink
from dwcore.backoff import Backoff
from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.codec import encode
from dwcore.schemas.event import Activity, make_event
from dwcore.schemas.topics import Topics
from dwcore.sinks import query_client
from dwcore.sinks.errors import StoreUnavailable
from dwcore.sinks.kafka_sink import ClickHouseSink
from dwcore.sinks.store import Store

T0 = 1700000000000
TOPICS = Topics.with_prefix("unit.")


class FakeMsg:
    def __init__(self, topic, partition, offset, value, key=None):
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def key(self):
        return self._k

    def error(self):
        return None


class FakeConsumer:
    def __init__(self):
        self.commits = []
        self.paused = False

    def commit(self, offsets, asynchronous):
        assert asynchronous is False
        self.commits.extend((tp.topic, tp.partition, tp.offset) for tp in offsets)

    def assignment(self):
        return []

    def pause(self, parts):
        self.paused = True

    def resume(self, parts):
        self.paused = False


def event(i: int):
    return make_event(Activity.UPDATE, uid=f"e{i}", time=T0 + i, user_name=f"u{i % 3}", device="fs1",
                      file_path=f"/f/{i}", entropy=7.5)


def alert():
    return Alert(uid="a1", title="t", rule="mass_rename", rule_uid="r", severity=Severity.HIGH, severity_id=4,
                 user="u1", first_seen=T0, detected_at=T0 + 1, signal="renames", observed=60, threshold=50,
                 window_s=10, file_count=60, paths=["/f/1"])


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=3650)
    s.writer.ensure_schema()
    yield s
    s.close()


def run_query(config, sql):
    return query_client.run_query(sql, dsn=config.store_dsn, database=config.store.database,
                                  addr_file=config.query_addr_file)


def count(store, table):
    return store.reader.query(f"SELECT count() FROM {table}").rows[0][0]


def test_batch_inserts_deadletters_bad_and_commits_after(store):
    consumer = FakeConsumer()
    sink = ClickHouseSink(store.writer, TOPICS, consumer, threading.Event())
    msgs = [FakeMsg(TOPICS.events, 2, 10 + i, encode(event(i)), key=b"u") for i in range(5)]
    msgs.insert(2, FakeMsg(TOPICS.events, 2, 99, b'{"uid": 7}'))
    msgs.append(FakeMsg(TOPICS.alerts, 0, 0, encode(alert())))
    sink.handle_batch(msgs)
    assert (count(store, "events"), count(store, "alerts"), count(store, "deadletter")) == (5, 1, 1)
    assert sorted(consumer.commits) == [(TOPICS.alerts, 0, 1), (TOPICS.events, 2, 15)]
    r = store.reader.query("SELECT source, reason, raw FROM deadletter")
    source, reason, raw = r.rows[0]
    assert source == f"{TOPICS.events}:2:99" and "invalid event" in reason and raw == '{"uid": 7}'
    # Replay of the same slice (crash between insert and commit): dropped by the dedup token.
    sink.handle_batch(msgs)
    assert (count(store, "events"), count(store, "alerts"), count(store, "deadletter")) == (5, 1, 1)


def test_retriable_store_error_retries_without_committing_first(store):
    consumer = FakeConsumer()
    real = store.writer.insert_events
    calls = []

    def flaky(events, dedup_token=None, positions=None):
        calls.append(dedup_token)
        if len(calls) < 3:
            assert consumer.commits == []
            raise StoreUnavailable("connection refused")
        return real(events, dedup_token=dedup_token, positions=positions)

    store.writer.insert_events = flaky
    sink = ClickHouseSink(store.writer, TOPICS, consumer, threading.Event(), backoff=Backoff(0.01, 0.02))
    sink.handle_batch([FakeMsg(TOPICS.events, 0, i, encode(event(i))) for i in range(3)])
    assert calls == [f"events:{TOPICS.events}:0:0-2"] * 3
    assert count(store, "events") == 3 and consumer.commits == [(TOPICS.events, 0, 3)]
    assert consumer.paused is False and sink.counters.retries == 2


def test_stop_during_outage_commits_nothing(store):
    consumer = FakeConsumer()
    stop = threading.Event()

    def down(events, dedup_token=None, positions=None):
        stop.set()
        raise StoreUnavailable("down")

    store.writer.insert_events = down
    sink = ClickHouseSink(store.writer, TOPICS, consumer, stop)
    sink.handle_batch([FakeMsg(TOPICS.events, 0, 0, encode(event(0)))])
    assert consumer.commits == []


def wait_for(pred, timeout=60.0, what=""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@pytest.mark.kafka
def test_sink_against_real_kafka_no_loss_no_duplicates(tmp_path, kafka_bootstrap, kafka_topics):
    topics = kafka_topics
    prefix = topics.events[: -len("dw.events")]
    config = Config(data_dir=str(tmp_path), kafka=KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=prefix),
                    store=StoreConfig(retention_days=3650))
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i in range(1000):
        ev = event(i)
        producer.produce(topics.events, key=ev.user_name.encode(), value=encode(ev))
    producer.produce(topics.events, key=b"u0", value=b"not json at all")
    producer.produce(topics.alerts, key=b"u1", value=encode(alert()))
    assert producer.flush(30) == 0

    def run_once(expect_events: int, after_ready=None):
        stop, ready = threading.Event(), threading.Event()
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(c=run_clickhouse_sink(config, stop, ready.set)), daemon=True)
        thread.start()
        try:
            assert ready.wait(60), "sink never became ready"
            if after_ready:
                after_ready()
            q = "SELECT (SELECT count() FROM events), (SELECT count() FROM alerts), (SELECT count() FROM deadletter)"
            # dataward query while the sink owns the chDB directory: through its endpoint
            wait_for(lambda: run_query(config, q).rows == [[expect_events, 1, 1]], what="rows")
        finally:
            stop.set()
            thread.join(30)
        assert not thread.is_alive()
        assert not config.query_addr_file.exists()
        return result["c"]

    first = run_once(1000)
    assert (first.received, first.inserted_into("events"), first.deadlettered) == (1002, 1000, 1)

    def one_more():
        producer.produce(topics.events, key=b"late", value=encode(event(5000)))
        assert producer.flush(30) == 0

    # Restart on the same directory and group: committed offsets hold, so the restarted sink
    # receives only the new event; nothing is inserted twice.
    second = run_once(1001, after_ready=one_more)
    assert second.received == 1 and second.inserted_into("events") == 1
    r = run_query(config, "SELECT count(), uniqExact(uid), min(toUnixTimestamp64Milli(time)) FROM events")
    assert r.rows == [[1001, 1001, T0]]
    dl = run_query(config, "SELECT reason, raw, source FROM deadletter").rows[0]
    assert "invalid event" in dl[0] and dl[1] == "not json at all" and dl[2].startswith(topics.events + ":")
    assert msgspec.json.decode(run_query(config, "SELECT toJSONString(paths) FROM alerts").rows[0][0]) == ["/f/1"]
