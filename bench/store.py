"""Events -> ClickHouse (embedded chDB): Store.insert_events against what the engine can take.

All three write the same schema into tables of their own in one fresh chDB directory:
- Store.insert_events, batches of 10k AccessEvent structs (pivot to columns, clickhouse-connect
  Native insert): the path the sinks use;
- baseline (a): the same events as JSONEachRow bytes (what arrives from Kafka), passed straight
  through ``raw_insert``; the wire's epoch-ms ``time`` is converted in the engine by a Null-engine
  landing table and a materialized view; checked row for row against the Store's table;
- baseline (b): the engine alone, ``INSERT INTO ... SELECT`` generating similar rows from numbers(),
  into a bare copy of the events table, and (c) the same into the full events schema of a store
  (projection ``by_source``, materialized views ``events_by_path`` and ``user_minute``): (c) is the
  ceiling for anything that writes the forensic store on this machine, whatever the client does;
- end to end: the same events as JSON messages in a Kafka topic (6 partitions, produced before the
  clock starts), consumed by the distributed sink (``ClickHouseSink``: batching, replay guard,
  positions, custody sealing) into a database of its own in the same chDB; checked row for row
  against the Store's table. Needs Kafka (KAFKA_BOOTSTRAP, else the project's broker is started).
  The sink's own stage timings (consume, decode, insert, commit, seal) show where its time goes.

Every row carries the 1-minute load average at its end: on a shared machine the absolute rates
mean little without it, the same-run ratios are what carry over.
"""
from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console

from bench.common import (
    Result,
    chunks,
    make_workload,
    progress,
    render,
    standalone,
    timed_result,
    with_rate_ratios,
)
from dwcore.schemas.codec import encode
from dwcore.schemas.ddl import EVENT_COLUMNS, EVENTS_TABLE
from dwcore.schemas.event import AccessEvent
from dwcore.sinks.store import Store
from dwcore.sinks.store_writer import StoreWriter

BENCH = "store"
BATCH = 10_000
DB = "dataward"
WARM_DB = "bench_warm"
CEILING_DB = "bench_ceiling"
JSON_TABLE, LANDING, SELECT_TABLE = "events_json", "events_json_landing", "events_select"


def _sql_literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(int(value))


def landing_ddl(db: str = DB) -> list[str]:
    """A Null table shaped like the JSON on the wire (time in epoch ms, struct defaults for omitted
    fields) and a view moving its rows, time converted, into a copy of the events table."""
    defaults = {f.name: f.default for f in msgspec.structs.fields(AccessEvent)
                if f.default is not msgspec.NODEFAULT and f.default is not None}
    cols = []
    for name, typ in EVENT_COLUMNS:
        typ = "Int64" if name == "time" else typ
        default = f" DEFAULT {_sql_literal(defaults[name])}" if name in defaults else ""
        cols.append(f"`{name}` {typ}{default}")
    names = ", ".join(f"`{n}`" for n, _ in EVENT_COLUMNS if n != "time")
    return [
        f"CREATE TABLE {db}.{JSON_TABLE} AS {db}.{EVENTS_TABLE}",
        f"CREATE TABLE {db}.{LANDING} ({', '.join(cols)}) ENGINE = Null",
        f"CREATE MATERIALIZED VIEW {db}.{LANDING}_mv TO {db}.{JSON_TABLE} AS SELECT "
        f"fromUnixTimestamp64Milli(`time`, 'UTC') AS `time`, {names} FROM {db}.{LANDING}",
        f"CREATE TABLE {db}.{SELECT_TABLE} AS {db}.{EVENTS_TABLE}",
    ]


# Rows like the workload's: 50 users, mixed activities, paths of similar length; one in ten a rename.
GENERATE_SQL = """INSERT INTO {target} (uid, time, activity_id, activity_name, user_name, user_uid,
    attribution, device, source, share, file_path, file_new_path, file_size, bytes_written, entropy, mime_type,
    alarm, message, class_uid)
SELECT lower(concat(hex(cityHash64(number, 'a')), hex(cityHash64(number, 'b')))) AS uid,
       fromUnixTimestamp64Milli(toInt64(1767225600000 + number * 144), 'UTC') AS time,
       toUInt8([1, 1, 1, 3, 3, 3, 3, 5, 4, 1][number % 10 + 1]) AS activity_id,
       ['Create', 'Create', 'Create', 'Update', 'Update', 'Update', 'Update', 'Rename', 'Delete', 'Create']
           [number % 10 + 1] AS activity_name,
       concat('user', leftPad(toString(number % 49), 2, '0')) AS user_name,
       toString(1000 + number % 50) AS user_uid,
       'owner' AS attribution,
       concat('fs', toString(number % 3)) AS device,
       'file' AS source,
       concat('share', toString(number % 4)) AS share,
       concat('/srv/share', toString(number % 4), '/user', leftPad(toString(number % 49), 2, '0'),
              '/project', toString(number % 97), '/report-', leftPad(toString(number), 7, '0'), '.docx')
           AS file_path,
       if(number % 10 = 7, concat(file_path, '.old'), NULL) AS file_new_path,
       if(number % 10 IN (7, 8), NULL, cityHash64(number) % 1048576) AS file_size,
       if(number % 10 IN (3, 4, 5, 6), cityHash64(number, 'w') % 65536, NULL) AS bytes_written,
       NULL AS entropy, NULL AS mime_type, NULL AS alarm, NULL AS message, 1001 AS class_uid
FROM numbers({{n:UInt64}})"""


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def count(store: Store, table: str) -> int:
    return int(store.reader.query(f"SELECT count() FROM {DB}.{table}").rows[0][0])


def fingerprint(store: Store, table: str) -> int:
    """Order-independent hash of every row: equal for two tables holding the same rows."""
    cols = ", ".join(f"`{n}`" for n, _ in EVENT_COLUMNS)
    sql = f"SELECT groupBitXor(cityHash64(toString(tuple({cols})))) FROM {DB}.{table}"
    return int(store.reader.query(sql).rows[0][0])


def run(events: int, console: Console) -> list[Result]:
    workload = make_workload(events)
    # Bytes as they arrive from Kafka: one JSON document per event, built before any timing.
    json_batches = [b"\n".join(encode(e) for e in batch) for batch in chunks(workload, BATCH)]
    n = len(workload)
    with tempfile.TemporaryDirectory(prefix="dw-bench-chdb-") as tmp:
        store = Store.open(f"chdb://{Path(tmp) / 'chdb'}", DB)
        try:
            store.writer.ensure_schema()
            client = store._backend._client  # the baseline needs the raw driver
            for stmt in landing_ddl():
                client.command(stmt)
            # Warm both paths (driver types, engine caches) on a scratch database, outside the timing.
            warm = StoreWriter(store._backend, WARM_DB, 400, store.label)
            warm.ensure_schema()
            for stmt in landing_ddl(WARM_DB):
                client.command(stmt)
            warm.insert_events(workload[:BATCH])
            client.raw_insert(f"{WARM_DB}.{LANDING}", insert_block=json_batches[0], fmt="JSONEachRow")
            ceiling = StoreWriter(store._backend, CEILING_DB, 400, store.label)
            ceiling.ensure_schema()
            gc.collect()
            loads: dict[str, str] = {}
            with progress(console) as prog:
                task = prog.add_task("Store.insert_events", total=n)
                t0 = time.perf_counter()
                for batch in chunks(workload, BATCH):
                    store.writer.insert_events(batch)
                    prog.advance(task, len(batch))
                store_s = time.perf_counter() - t0
                loads["store"] = load()
                gc.collect()

                task = prog.add_task("raw_insert JSONEachRow", total=n)
                t0 = time.perf_counter()
                for body in json_batches:
                    client.raw_insert(f"{DB}.{LANDING}", insert_block=body, fmt="JSONEachRow")
                    prog.advance(task, body.count(b"\n") + 1)
                json_s = time.perf_counter() - t0
                loads["json"] = load()
            gc.collect()

            t0 = time.perf_counter()
            client.command(GENERATE_SQL.format(target=f"{DB}.{SELECT_TABLE}"), parameters={"n": n})
            select_s = time.perf_counter() - t0
            loads["select"] = load()
            t0 = time.perf_counter()
            client.command(GENERATE_SQL.format(target=f"{CEILING_DB}.{EVENTS_TABLE}"), parameters={"n": n})
            ceiling_s = time.perf_counter() - t0
            loads["ceiling"] = load()

            counts = {t: count(store, t) for t in (EVENTS_TABLE, JSON_TABLE, SELECT_TABLE)}
            if set(counts.values()) != {n}:
                raise RuntimeError(f"row counts differ from {n}: {counts}")
            same_fp = fingerprint(store, EVENTS_TABLE)
            same_rows = same_fp == fingerprint(store, JSON_TABLE)
        finally:
            store.close()
        sink_s, sink_same, stages = end_to_end(workload, tmp, console)
        loads["sink"] = load()
    results = [
        timed_result(BENCH, "Kafka -> ClickHouseSink -> chDB (end to end, 50k/batch)", n, sink_s,
                     extra={"same rows as Store": "yes" if sink_same == same_fp else "NO", "load": loads["sink"]}),
        timed_result(BENCH, "Store.insert_events (structs, 10k/batch)", n, store_s, extra={"load": loads["store"]}),
        timed_result(BENCH, "(a) raw_insert JSONEachRow bytes (10k/batch)", n, json_s, baseline=True,
                     extra={"same rows as Store": "yes" if same_rows else "NO", "load": loads["json"]}),
        timed_result(BENCH, "(b) engine INSERT ... SELECT FROM numbers(), bare table", n, select_s,
                     extra={"load": loads["select"]}),
        timed_result(BENCH, "(c) engine INSERT ... SELECT, full events schema (ceiling)", n, ceiling_s,
                     extra={"load": loads["ceiling"]}),
    ]
    with_rate_ratios(results)
    ceiling_rate = results[4].rate or 1.0
    for r in results:
        r.extra["vs (c) ceiling"] = f"{(r.rate or 0) / ceiling_rate:.2f}x"
    total = sum(stages.values()) or 1.0
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        results.append(Result(bench=BENCH, name=f"  sink stage: {stage}", count=n, seconds=seconds, rate=None,
                              extra={"share of sink time": f"{seconds / total:.0%}"}))
    return results


SINK_DB = "bench_sink"
SINK_BATCH = 50_000


def end_to_end(workload: list[AccessEvent], tmp: str, console: Console) -> tuple[float, int, dict[str, float]]:
    """Seconds for the sink to take every event from Kafka into chDB; its table's fingerprint; the
    sink's seconds per stage."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    from bench.publish import bootstrap, create_topic
    from dwcore.schemas.topics import Topics
    from dwcore.sinks.consumer_config import consumer_config
    from dwcore.sinks.custody import Sealer
    from dwcore.sinks.kafka_sink import ClickHouseSink

    servers = bootstrap()
    topics = Topics.with_prefix(f"bench{uuid.uuid4().hex[:8]}.")
    admin = AdminClient({"bootstrap.servers": servers})
    create_topic(admin, topics.events, 6)
    create_topic(admin, topics.alerts, 1)
    create_topic(admin, topics.deadletter, 1)
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 20, "compression.type": "lz4"})
    for ev in workload:
        while True:
            try:
                producer.produce(topics.events, key=ev.user_name.encode(), value=encode(ev))
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("Kafka did not take every event")
    n = len(workload)
    store = Store.open(f"chdb://{Path(tmp) / 'chdb'}", SINK_DB)
    consumer = Consumer({**consumer_config({"bootstrap.servers": servers}, f"{topics.events}.sink"),
                         "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20})
    try:
        store.writer.ensure_schema()
        sink = ClickHouseSink(store.writer, topics, consumer, threading.Event(), batch_rows=SINK_BATCH,
                              flush_interval_s=1.0, sealer=Sealer(store.writer, 5.0))
        consumer.subscribe([topics.events, topics.alerts, topics.deadletter], on_assign=sink.on_assign,
                           on_revoke=sink.on_revoke)
        while not consumer.assignment():  # the group join is not part of the measurement
            consumer.poll(0.1)
        with progress(console) as prog:
            task = prog.add_task("Kafka -> sink -> chDB", total=n)
            t0 = time.perf_counter()
            while sink.counters.received < n or sink.pending_rows:
                before = sink.counters.inserted_into(EVENTS_TABLE)
                sink.poll(0.2)
                prog.advance(task, sink.counters.inserted_into(EVENTS_TABLE) - before)
            t1 = time.perf_counter()
            sink.sealer.tick(force=True)
            sink.counters.timed("seal", t1)
            sink_s = time.perf_counter() - t0
        stored = int(store.reader.query(f"SELECT count() FROM {SINK_DB}.{EVENTS_TABLE}").rows[0][0])
        if stored != n:
            raise RuntimeError(f"the sink stored {stored} of {n} events")
        cols = ", ".join(f"`{c}`" for c, _ in EVENT_COLUMNS)
        fp = int(store.reader.query(f"SELECT groupBitXor(cityHash64(toString(tuple({cols})))) "
                                    f"FROM {SINK_DB}.{EVENTS_TABLE}").rows[0][0])
    finally:
        consumer.close()
        store.close()
    return sink_s, fp, dict(sink.counters.seconds)


def report(console: Console, results: list[Result]) -> None:
    render(console, "Store: events -> embedded chDB (rate = rows/s)", results, count_label="rows",
           note="One fresh chDB directory, one table per path, same schema (MergeTree ORDER BY (user_name, time)).")


def main() -> None:
    standalone(__doc__, BENCH, run, report)


if __name__ == "__main__":
    main()
