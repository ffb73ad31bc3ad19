"""Schema migrations against embedded chDB: a fresh store, an upgrade of the skeleton's store with
history in it, idempotent re-runs, retention per table, and the derived tables kept in step."""
from __future__ import annotations

from pathlib import Path

import pytest

from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.event import Activity, make_event
from dwcore.schemas.migrations import MIGRATIONS
from dwcore.sinks.store import Store

T0 = 1700000000123  # 2023-11-14
RETENTION = 3650
SKELETON_SQL = Path(__file__).parent / "data" / "skeleton_schema.sql"
LATEST = max(m.version for m in MIGRATIONS)


def ev(i: int, user: str = "bob", activity: Activity = Activity.UPDATE, path: str | None = None, **kw):
    fields = dict(uid=f"u{user}{i}", time=T0 + i * 1000, user_name=user, device="fs1",
                  file_path=path or f"/srv/train/{i}.csv", bytes_written=100)
    if activity == Activity.RENAME:
        fields["file_new_path"] = fields["file_path"] + ".locked"
    fields.update(kw)
    return make_event(activity, **fields)


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=RETENTION)
    yield s
    s.close()


def tables(store: Store) -> dict[str, str]:
    rows = store.reader.query("SELECT name, engine FROM system.tables WHERE database = 'dataward'").rows
    return dict((name, engine) for name, engine in rows)


def test_fresh_store_gets_every_table_once(store):
    assert store.writer.ensure_schema() == [m.version for m in MIGRATIONS]
    assert store.writer.ensure_schema() == []  # idempotent: nothing left to apply
    got = tables(store)
    for name in ("events", "alerts", "deadletter", "deliveries", "inventory", "heartbeats", "backup_runs",
                 "custody_blocks", "events_by_path", "user_minute", "schema_migrations"):
        assert name in got, name
    assert got["user_minute"] == "AggregatingMergeTree"
    assert got["incident_events"] == "View"
    versions = store.reader.query(
        "SELECT version, count() FROM schema_migrations GROUP BY version ORDER BY version").rows
    assert versions == [[m.version, 1] for m in MIGRATIONS]
    keys = dict(store.reader.query("SELECT name, sorting_key FROM system.tables WHERE database = 'dataward'").rows)
    assert keys["events"] == "user_name, time"
    assert keys["events_by_path"] == "path, time"


def test_upgrade_from_skeleton_keeps_history_and_backfills(store):
    # The schema exactly as the walking skeleton created it, with history in it.
    for statement in SKELETON_SQL.read_text().split(";\n"):
        if statement.strip():
            # (its TTL widened: the test's history is from 2023)
            sql = statement.replace("{db}", "dataward").replace("INTERVAL 400 DAY", f"INTERVAL {RETENTION} DAY")
            store._backend.command(sql.rstrip(";"))
    old = [ev(i) for i in range(5)] + [ev(9, activity=Activity.RENAME, path="/srv/train/x.csv")]
    store.writer.insert_events(old)
    assert "schema_migrations" not in tables(store)

    assert store.writer.ensure_schema() == [m.version for m in MIGRATIONS]
    assert store.reader.query("SELECT count(), countIf(_src = '') FROM events").rows == [[6, 6]]
    # The rename shows under both of its paths in the per-path order, old rows included.
    rows = store.reader.query("SELECT path, role, other_path FROM events_by_path WHERE path LIKE '/srv/train/x%' "
                       "ORDER BY role").rows
    assert rows == [["/srv/train/x.csv.locked", "new_path", "/srv/train/x.csv"],
                    ["/srv/train/x.csv", "path", "/srv/train/x.csv.locked"]]
    per_min = store.reader.query("SELECT activity_name, sum(events), uniqMerge(files) FROM user_minute "
                          "WHERE user_name = 'bob' GROUP BY activity_name ORDER BY activity_name").rows
    assert per_min == [["Rename", 1, 1], ["Update", 5, 5]]
    # New rows flow through the views once, and only once.
    store.writer.insert_events([ev(20), ev(21)])
    assert store.reader.query("SELECT sum(events) FROM user_minute WHERE user_name = 'bob'").rows == [[8]]
    assert store.reader.query("SELECT count() FROM events_by_path").rows == [[9]]
    assert store.writer.ensure_schema() == []
    assert store.reader.query("SELECT count() FROM events").rows == [[8]]


def test_retention_per_table_follows_configuration(tmp_path):
    dsn = f"chdb://{tmp_path / 'chdb'}"
    with Store.open(dsn, retention_days=400) as s:
        s.writer.ensure_schema()
    with Store.open(dsn, retention_days=100, ttl_days={"heartbeats": 7}) as s:
        s.writer.ensure_schema()
        ttl = dict(s.reader.query("SELECT name, extract(engine_full, 'toIntervalDay\\\\((\\\\d+)\\\\)') "
                           "FROM system.tables WHERE database = 'dataward'").rows)
    assert ttl["events"] == "100" and ttl["events_by_path"] == "100"
    assert ttl["alerts"] == "300"  # incidents outlive the raw events they summarise
    assert ttl["heartbeats"] == "7"
    assert ttl["custody_blocks"] == ""  # a chain with holes cannot be verified: never expires
    with Store.open(dsn, retention_days=100, ttl_days={"custody_blocks": 1}) as s:
        with pytest.raises(ValueError, match="no retention for table"):
            s.writer.ensure_schema()


def test_a_column_the_table_lacks_is_added_at_start(store):
    store.writer.ensure_schema()
    store._backend.command("ALTER TABLE dataward.events DROP COLUMN config_change")
    store.writer.ensure_schema()
    store.writer.insert_events([ev(1, config_change="versioning:Suspended")])
    assert store.reader.query("SELECT config_change FROM events").rows == [["versioning:Suspended"]]


def test_incident_events_links_events_to_their_incident(store):
    store.writer.ensure_schema()
    store.writer.insert_events([ev(i) for i in range(10)] + [ev(5, user="carol")])
    store.writer.insert_alerts([Alert(uid="inc1", title="t", rule="mass_rename", rule_uid="r", severity=Severity.HIGH,
                               severity_id=4, user="bob", first_seen=T0 + 6000, detected_at=T0 + 8000,
                               signal="renames", observed=3, threshold=2, window_s=10, file_count=3,
                               paths=[], last_seen=T0 + 8000)])
    rows = store.reader.query("SELECT uid FROM incident_events(incident = 'inc1', before_s = 0) ORDER BY time").rows
    assert rows == [["ubob6"], ["ubob7"], ["ubob8"]]
    rows = store.reader.query("SELECT count() FROM incident_events(incident = {i:String}, before_s = 3)",
                       {"i": "inc1"}).rows
    assert rows == [[6]]  # three seconds of context before the first counted event
