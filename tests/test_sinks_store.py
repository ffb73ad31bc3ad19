"""Store against embedded chDB: what goes in comes out, at the right instant, once, read-only."""
from __future__ import annotations

import pytest

from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.ddl import EVENT_COLUMNS
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.chbackend import redact_dsn, unescape_param
from dwcore.sinks.store import Store, StoreError, StoreUnavailable

T0 = 1700000000123  # 2023-11-14; retention must cover it or the TTL drops the part at once
RETENTION = 3650


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=RETENTION)
    s.writer.ensure_schema()
    yield s
    s.close()


def full_event(i: int = 0):
    return make_event(
        Activity.RENAME, uid=f"full{i}", time=T0 + i, user_name="bob", user_uid="1001",
        attribution="auditd", device="fs1", source="file", share="projects", file_path=f"/d/{i}.csv",
        file_new_path=f"/d/{i}.csv.lock", file_size=4096, bytes_written=4096, entropy=7.95,
        mime_type="application/octet-stream", alarm="queue_overflow", message="gap", class_uid=1001,
    )


def minimal_event(i: int = 0):
    return make_event(Activity.CREATE, uid=f"min{i}", time=T0 + i, user_name="alice", device="fs1",
                      file_path=f"/d/{i}")


def alert(uid="a1", severity=Severity.HIGH):
    return Alert(
        uid=uid, title="Mass rename", rule="mass_rename", rule_uid="0d1c", severity=severity,
        severity_id=severity.ocsf_id, user="bob", first_seen=T0, detected_at=T0 + 500, signal="renames",
        observed=120.0, threshold=50.0, window_s=10.0, file_count=120, paths=["/d/0.csv", "/d/1.csv"],
        devices=["fs1"], shares=["projects"], tags=["attack.t1486"], description="120 renames in 10 s",
    )


def test_event_roundtrip_optional_fields_none_and_set(store):
    assert store.writer.insert_events([minimal_event(), full_event()]) == 2
    r = store.reader.query("SELECT * EXCEPT time FROM events ORDER BY uid")
    rows = [dict(zip(r.columns, row, strict=True)) for row in r.rows]
    assert [row["uid"] for row in rows] == ["full0", "min0"]
    full, minimal = rows
    assert full["file_new_path"] == "/d/0.csv.lock"
    assert full["file_size"] == 4096 and full["bytes_written"] == 4096
    assert full["entropy"] == pytest.approx(7.95, abs=1e-5)
    assert (full["attribution"], full["share"], full["alarm"], full["message"]) == (
        "auditd", "projects", "queue_overflow", "gap")
    assert full["activity_id"] == 5 and full["activity_name"] == "Rename"
    for col in ("file_new_path", "file_size", "bytes_written", "entropy", "mime_type", "alarm", "message"):
        assert minimal[col] is None, col
    assert minimal["attribution"] == "owner" and minimal["user_uid"] == ""


def test_columns_null_in_every_row_stay_null_beside_hostile_paths_kept_verbatim(store):
    """A batch where every optional column is NULL in every row (the writer sends those columns
    without looking at each row) stores NULL, not the type's default; the paths beside them come
    back byte for byte; the next batch, with those columns set, stores its values."""
    hostile = ["/share/it's \"q\"", "/share/back\\slash", "/share/new\nline", "/share/tab\there",
               "/share/x'; DROP TABLE events; --", "/share/\u00e9t\u00e9 \u6587\u4ef6 \U0001f512", "/share/nul\x00byte"]
    batch = [make_event(Activity.CREATE, uid=f"n{i}", time=T0 + i, user_name="alice", device="fs1", file_path=p)
             for i, p in enumerate(hostile)]
    store.writer.insert_events(batch, positions=(["s:0"] * len(batch), list(range(len(batch)))))
    nullable = [name for name, typ in EVENT_COLUMNS if "Nullable(" in typ]
    assert len(nullable) > 15
    counts = store.reader.query("SELECT " + ", ".join(f"countIf(isNull(`{c}`))" for c in nullable)
                                + " FROM events").rows
    assert counts == [[len(batch)] * len(nullable)]
    r = store.reader.query("SELECT file_path, _src, _offset FROM events ORDER BY uid")
    assert r.rows == [[p, "s:0", i] for i, p in enumerate(hostile)]
    store.writer.insert_events([full_event(1)])
    (row,) = store.reader.query("SELECT file_new_path, file_size, entropy, mime_type, message FROM events "
                                "WHERE uid = 'full1'").rows
    assert row[0] == "/d/1.csv.lock" and row[1] == 4096 and row[3:] == ["application/octet-stream", "gap"]
    assert row[2] == pytest.approx(7.95, abs=1e-5)


def test_time_is_the_exact_instant(store):
    store.writer.insert_events([minimal_event()])
    r = store.reader.query("SELECT toUnixTimestamp64Milli(time), toString(time), timezone() FROM events")
    assert r.rows == [[T0, "2023-11-14 22:13:20.123", "UTC"]]


def test_alert_roundtrip_with_arrays(store):
    store.writer.insert_alerts([alert()])
    r = store.reader.query("SELECT paths, devices, shares, tags, toUnixTimestamp64Milli(first_seen), "
                    "toUnixTimestamp64Milli(detected_at), severity, severity_id, observed FROM alerts")
    assert r.rows == [[["/d/0.csv", "/d/1.csv"], ["fs1"], ["projects"], ["attack.t1486"], T0, T0 + 500,
                       "high", 4, 120.0]]


def test_deadletter_keeps_raw_bytes_and_reason(store):
    store.writer.insert_deadletters([DeadLetter(raw=b'{"uid": 1}', key=b"k", reason="invalid event: uid",
                                         source="dw.events:3:17", time=T0)])
    r = store.reader.query("SELECT raw, key, reason, source FROM deadletter")
    assert r.rows == [['{"uid": 1}', "k", "invalid event: uid", "dw.events:3:17"]]


def test_dedup_token_drops_a_replayed_batch(store):
    batch = [minimal_event(i) for i in range(3)]
    store.writer.insert_events(batch, dedup_token="dw.events:0:0-2")
    store.writer.insert_events(batch, dedup_token="dw.events:0:0-2")
    assert store.reader.query("SELECT count() FROM events").rows == [[3]]
    store.writer.insert_events(batch, dedup_token="dw.events:0:3-5")  # another token is another batch
    assert store.reader.query("SELECT count() FROM events").rows == [[6]]


def test_parameters_are_bound_not_spliced(store):
    store.writer.insert_events([minimal_event(), full_event()])
    r = store.reader.query("SELECT uid FROM events WHERE user_name = {u:String} AND time >= {t:DateTime64(3)}",
                    {"u": "bob", "t": "2023-11-14 22:13:20.000"})
    assert r.rows == [["full0"]]
    sneaky = "x' OR 1=1 --"
    assert store.reader.query("SELECT count() FROM events WHERE user_name = {u:String}", {"u": sneaky}).rows == [[0]]
    assert store.reader.query("SELECT {s:String}", {"s": "tab\there\\"}).rows == [["tab\there\\"]]


@pytest.mark.parametrize("sql", [
    "DROP TABLE events",
    "INSERT INTO events (uid) VALUES ('x')",
    "ALTER TABLE events DELETE WHERE 1",
    "SELECT 1 SETTINGS readonly = 0",
    "CREATE TABLE x (a UInt8) ENGINE = Memory",
])
def test_queries_are_readonly(store, sql):
    store.writer.insert_events([minimal_event()])
    with pytest.raises(StoreError) as err:
        store.reader.query(sql)
    assert err.value.code == 164 and not err.value.retriable
    assert store.reader.query("SELECT count() FROM events").rows == [[1]]
    store.writer.insert_events([minimal_event(1)])  # the writer is untouched by the readers' readonly
    assert store.reader.query("SELECT count() FROM events").rows == [[2]]


def test_query_bytes_format_and_trailing_format(store):
    store.writer.insert_events([minimal_event()])
    assert store.reader.query_bytes("SELECT uid, user_name FROM events", "TabSeparated") == b"min0\talice\n"
    assert store.reader.query_bytes("SELECT uid FROM events FORMAT JSONEachRow", "TabSeparated") == b'{"uid":"min0"}\n'
    assert store.reader.query_bytes("SELECT {s:String}", "TabSeparated", text_params={"s": "a\\tb"}) == b"a\\tb\n"


def test_bad_sql_is_permanent(store):
    with pytest.raises(StoreError) as err:
        store.reader.query("SELEC 1")
    assert err.value.code == 62
    with pytest.raises(StoreError):
        store.reader.query("SELECT * FROM no_such_table")


def test_server_down_is_retriable():
    with pytest.raises(StoreUnavailable) as err:
        Store.open("http://default:s3cret@127.0.0.1:1")
    assert err.value.retriable
    assert "s3cret" not in str(err.value)


def test_unsupported_dsn_and_redaction():
    with pytest.raises(StoreError):
        Store.open("mysql://x")
    assert redact_dsn("https://u:pw@ch.example:8443/db") == "https://u:***@ch.example:8443/db"
    assert redact_dsn("chdb:///data/chdb") == "chdb:///data/chdb"


def test_unescape_param():
    assert unescape_param("a\\tb\\\\c\\'") == "a\tb\\c'"
    assert unescape_param("\\N") is None


def test_insert_context_made_once_per_table_and_shared_safely_by_threads(store):
    """One InsertContext per table, reused for every batch (no per-batch set-up), and threads
    inserting into the same table through it neither lose nor mix rows; LowCardinality columns,
    sent as plain strings, come back as written."""
    import threading

    backend = store._backend
    made = backend.contexts_made
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for b in range(5):
                store.writer.insert_events([full_event(t * 1000 + b * 10 + i) for i in range(10)])
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert backend.contexts_made == made + 1  # 20 batches from 4 threads, one context for events
    r = store.reader.query("SELECT count(), uniqExact(uid), any(user_name), any(attribution), any(alarm), "
                           "toTypeName(user_name) FROM events")
    assert r.rows == [[200, 200, "bob", "auditd", "queue_overflow", "LowCardinality(String)"]]
    store.writer.insert_alerts([alert("a1")])
    store.writer.insert_alerts([alert("a2")])
    assert backend.contexts_made == made + 2
