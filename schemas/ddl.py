"""ClickHouse columns and DDL for the forensic history.

``ORDER BY (user_name, time)``: the SOC's first question is "what did this user do, when".
Monthly partitions so retention (TTL) drops whole parts. ``non_replicated_deduplication_window``
lets the sink pass an insert dedup token ``topic:partition:first-last``: a replayed batch after a
sink restart is dropped by the engine instead of doubling the evidence.

The schema itself is built by the versioned migrations in ``schemas/migrations.py`` (applied at
start, recorded in ``schema_migrations``); ``ddl_statements`` is the first of them, the schema of
the walking skeleton. A new table or column: add a migration there (and for a new Struct field, the
column at the end of its tuple here; columns missing from a table are added at start).
"""
from __future__ import annotations

EVENTS_TABLE = "events"
ALERTS_TABLE = "alerts"
DEADLETTER_TABLE = "deadletter"

# Column order is the insert order used by sinks; keep in step with dwcore.schemas.event.AccessEvent
# (the same names in the same order, so a row is astuple(event)).
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("uid", "String"),
    ("time", "DateTime64(3, 'UTC')"),
    ("activity_id", "UInt8"),
    ("activity_name", "LowCardinality(String)"),
    ("user_name", "LowCardinality(String)"),
    ("user_uid", "String"),
    ("attribution", "LowCardinality(String)"),
    ("device", "LowCardinality(String)"),
    ("source", "LowCardinality(String)"),
    ("share", "LowCardinality(String)"),
    ("file_path", "String"),
    ("file_new_path", "Nullable(String)"),
    ("file_size", "Nullable(UInt64)"),
    ("bytes_written", "Nullable(UInt64)"),
    ("entropy", "Nullable(Float32)"),
    ("mime_type", "LowCardinality(Nullable(String))"),
    ("alarm", "LowCardinality(Nullable(String))"),
    ("message", "Nullable(String)"),
    ("class_uid", "UInt16"),
    ("names_escaped", "Bool"),
    ("auid", "String"),
    ("auid_name", "LowCardinality(String)"),
    ("process_pid", "Nullable(UInt32)"),
    ("process_exe", "LowCardinality(Nullable(String))"),
    ("client_ip", "Nullable(String)"),
    ("printable_ratio", "Nullable(Float32)"),
    ("magic_type", "LowCardinality(Nullable(String))"),
    ("ext_mismatch", "Nullable(Bool)"),
    ("prev_entropy", "Nullable(Float32)"),
    ("prev_magic_type", "LowCardinality(Nullable(String))"),
    ("partial_encryption", "LowCardinality(Nullable(String))"),
    ("sample_skipped", "LowCardinality(Nullable(String))"),
    ("canary", "Bool"),
    ("reconciled", "Bool"),
    ("s3_operation", "LowCardinality(Nullable(String))"),
    ("s3_version_id", "Nullable(String)"),
    ("sse", "LowCardinality(Nullable(String))"),
    ("kms_key_account", "Nullable(String)"),
    ("bytes_read", "Nullable(UInt64)"),
    ("config_change", "Nullable(String)"),
)

ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("uid", "String"),
    ("title", "String"),
    ("rule", "LowCardinality(String)"),
    ("rule_uid", "String"),
    ("severity", "LowCardinality(String)"),
    ("severity_id", "UInt8"),
    ("user", "LowCardinality(String)"),
    ("first_seen", "DateTime64(3, 'UTC')"),
    ("detected_at", "DateTime64(3, 'UTC')"),
    ("signal", "LowCardinality(String)"),
    ("observed", "Float64"),
    ("threshold", "Float64"),
    ("window_s", "Float64"),
    ("file_count", "UInt32"),
    ("paths", "Array(String)"),
    ("devices", "Array(String)"),
    ("shares", "Array(String)"),
    ("tags", "Array(String)"),
    ("description", "String"),
    ("class_uid", "UInt16"),
    ("version", "UInt32"),
    ("last_seen", "DateTime64(3, 'UTC')"),
    ("status", "LowCardinality(String)"),
    ("drill", "Bool"),
    ("evidences", "Array(Tuple(kind LowCardinality(String), name LowCardinality(String), value Float64, "
     "threshold Float64, window_s Float64, rule_uid String, level LowCardinality(String), "
     "first_seen Int64, last_seen Int64))"),
    ("anomaly_analyses", "Array(Tuple(model String, feature LowCardinality(String), baseline Float64, "
     "observed Float64, deviation Float64))"),
)

INCIDENT_ACTIONS_TABLE = "incident_actions"
# Who resolved (or otherwise acted on) an incident, and when: the analyst's audit trail.
INCIDENT_ACTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("uid", "String"),
    ("time", "DateTime64(3, 'UTC')"),
    ("action", "LowCardinality(String)"),
    ("actor", "String"),
    ("note", "String"),
    ("version", "UInt32"),
)

DEADLETTER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "DateTime64(3, 'UTC')"),
    ("source", "String"),
    ("reason", "String"),
    ("key", "Nullable(String)"),
    ("raw", "String"),
    ("size", "UInt64"),
    ("truncated", "Bool"),
)

# Where a row came from, for exact replays: the Kafka "topic:partition" and offset of the message
# (the embedded mode: "embedded" and its own sequence). Not part of the event contract; written by
# the sink beside the event columns, and sealed with them in custody blocks.
SOURCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_src", "LowCardinality(String)"),
    ("_offset", "UInt64"),
)

DELIVERIES_TABLE = "deliveries"
INVENTORY_TABLE = "inventory"
HEARTBEATS_TABLE = "heartbeats"
BACKUP_RUNS_TABLE = "backup_runs"
CUSTODY_TABLE = "custody_blocks"
EVENTS_BY_PATH_TABLE = "events_by_path"
USER_MINUTE_TABLE = "user_minute"
MIGRATIONS_TABLE = "schema_migrations"

# One attempt to deliver one alert version to one destination (webhooks, pager): "was anyone paged".
DELIVERY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "DateTime64(3, 'UTC')"),
    ("alert_uid", "String"),
    ("alert_version", "UInt32"),
    ("destination", "LowCardinality(String)"),
    ("kind", "LowCardinality(String)"),  # slack, teams, pagerduty, webhook, ...
    ("attempt", "UInt16"),
    ("status", "LowCardinality(String)"),  # delivered, retry, failed, disabled
    ("http_status", "Nullable(UInt16)"),
    ("latency_ms", "UInt32"),
    ("error", "String"),
    ("message_id", "String"),  # webhook-id / dedup key of the request (a digest's own id)
    ("digest_size", "UInt32"),  # alerts carried by that request (1, or a digest's size)
    ("test", "Bool"),  # sent by `dataward alerts test`
)

# One file seen by an inventory scan (the data-collection stage: how old, whose, what type).
INVENTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scan_id", "String"),
    ("scanned_at", "DateTime64(3, 'UTC')"),
    ("device", "LowCardinality(String)"),
    ("root", "LowCardinality(String)"),
    ("path", "String"),
    ("size", "UInt64"),
    ("mtime", "DateTime64(3, 'UTC')"),
    ("owner", "LowCardinality(String)"),
    ("owner_uid", "String"),
    ("file_type", "LowCardinality(String)"),
    ("names_escaped", "Bool"),
)

# An agent saying it is alive, and how it is doing: a silent agent is visible downstream.
HEARTBEAT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "DateTime64(3, 'UTC')"),
    ("device", "LowCardinality(String)"),
    ("agent", "LowCardinality(String)"),  # file, s3, inventory
    ("version", "LowCardinality(String)"),
    ("events_seen", "UInt64"),
    ("spool_depth", "UInt64"),
    ("lag_ms", "Nullable(UInt64)"),
    ("status", "LowCardinality(String)"),
)

# One backup run (a new version per state change; ReplacingMergeTree on updated_at keeps the last).
BACKUP_RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "String"),
    ("started_at", "DateTime64(3, 'UTC')"),
    ("updated_at", "DateTime64(3, 'UTC')"),
    ("finished_at", "Nullable(DateTime64(3, 'UTC'))"),
    ("mode", "LowCardinality(String)"),  # scheduled, continuous, restore, seal
    ("source", "String"),
    ("bucket", "String"),
    ("prefix", "String"),
    ("status", "LowCardinality(String)"),  # running, done, halted, failed
    ("files", "UInt64"),
    ("bytes", "UInt64"),
    ("skipped", "UInt64"),
    ("errors", "UInt32"),
    ("manifest_key", "String"),
    ("reason", "String"),
)

# A sealed block of events: the hash of its rows and of the block before it (tamper evidence).
CUSTODY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("stream", "LowCardinality(String)"),  # the _src the block covers
    ("seq", "UInt64"),  # 1, 2, ... per stream
    ("first_offset", "UInt64"),
    ("last_offset", "UInt64"),
    ("rows", "UInt64"),
    ("min_time", "DateTime64(3, 'UTC')"),
    ("max_time", "DateTime64(3, 'UTC')"),
    ("columns", "Array(LowCardinality(String))"),  # which columns the rows hash covers, in order
    ("rows_hash", "String"),  # hex SHA-256 over the rows' hashes in offset order
    ("prev_hash", "String"),  # block_hash of seq - 1 ('' for the first)
    ("block_hash", "String"),  # hex SHA-256 of the block's own fields and prev_hash
    ("sealed_at", "DateTime64(3, 'UTC')"),
)

# The backup controller (sinks/backup_*): every S3 version it wrote (a later row with a higher
# `rev` flags it suspect), and its audit trail (halts, resumes, seals, hooks). Column order mirrors
# dwcore.sinks.backup_model (ManifestRow, AuditRow). Runs go to backup_runs above.
BACKUP_MANIFEST_TABLE = "backup_manifest"
BACKUP_AUDIT_TABLE = "backup_audit"

BACKUP_MANIFEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("bucket", "LowCardinality(String)"),
    ("key", "String"),
    ("version_id", "String"),
    ("run_id", "String"),
    ("path", "String"),
    ("size", "UInt64"),
    ("sha256", "String"),
    ("uploaded_at", "DateTime64(3, 'UTC')"),
    ("suspect", "Bool"),
    ("incident", "String"),
    ("rev", "UInt64"),
)

BACKUP_AUDIT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "DateTime64(3, 'UTC')"),
    ("action", "LowCardinality(String)"),
    ("incident", "String"),
    ("who", "String"),
    ("detail", "String"),
)

_SETTINGS = "SETTINGS non_replicated_deduplication_window = 1000"


def _columns(cols: tuple[tuple[str, str], ...]) -> str:
    return ",\n    ".join(f"`{name}` {typ}" for name, typ in cols)


def ddl_statements(database: str, retention_days: int = 400) -> list[str]:
    """CREATE statements, idempotent. ``database`` must be a plain identifier (checked)."""
    if not database.replace("_", "").isalnum():
        raise ValueError(f"database name must be letters, digits and _: {database!r}")
    ttl_days = int(retention_days)
    # toDateTime() overflows after 2106: a huge TTL would silently delete every new row.
    if not 1 <= ttl_days <= 20_000:
        raise ValueError(f"retention_days must be between 1 and 20000, got {retention_days}")
    return [
        f"CREATE DATABASE IF NOT EXISTS `{database}`",
        f"""CREATE TABLE IF NOT EXISTS `{database}`.`{EVENTS_TABLE}` (
    {_columns(EVENT_COLUMNS)}
) ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (user_name, time)
TTL toDateTime(time) + INTERVAL {ttl_days} DAY DELETE
{_SETTINGS}, ttl_only_drop_parts = 1""",
        f"""CREATE TABLE IF NOT EXISTS `{database}`.`{ALERTS_TABLE}` (
    {_columns(ALERT_COLUMNS)}
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(detected_at)
ORDER BY (user, uid)
{_SETTINGS}""",
        f"""CREATE TABLE IF NOT EXISTS `{database}`.`{DEADLETTER_TABLE}` (
    {_columns(DEADLETTER_COLUMNS)}
) ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY time
{_SETTINGS}""",
    ]
