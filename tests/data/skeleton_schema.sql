CREATE DATABASE IF NOT EXISTS `{db}`;

CREATE TABLE IF NOT EXISTS `{db}`.`events` (
    `uid` String,
    `time` DateTime64(3, 'UTC'),
    `activity_id` UInt8,
    `activity_name` LowCardinality(String),
    `user_name` LowCardinality(String),
    `user_uid` String,
    `attribution` LowCardinality(String),
    `device` LowCardinality(String),
    `source` LowCardinality(String),
    `share` LowCardinality(String),
    `file_path` String,
    `file_new_path` Nullable(String),
    `file_size` Nullable(UInt64),
    `bytes_written` Nullable(UInt64),
    `entropy` Nullable(Float32),
    `mime_type` LowCardinality(Nullable(String)),
    `alarm` LowCardinality(Nullable(String)),
    `message` Nullable(String),
    `class_uid` UInt16,
    `names_escaped` Bool,
    `auid` String,
    `auid_name` LowCardinality(String),
    `process_pid` Nullable(UInt32),
    `process_exe` LowCardinality(Nullable(String)),
    `client_ip` Nullable(String),
    `printable_ratio` Nullable(Float32),
    `magic_type` LowCardinality(Nullable(String)),
    `ext_mismatch` Nullable(Bool),
    `prev_entropy` Nullable(Float32),
    `prev_magic_type` LowCardinality(Nullable(String)),
    `partial_encryption` LowCardinality(Nullable(String)),
    `sample_skipped` LowCardinality(Nullable(String)),
    `canary` Bool,
    `reconciled` Bool,
    `s3_operation` LowCardinality(Nullable(String)),
    `s3_version_id` Nullable(String),
    `sse` LowCardinality(Nullable(String)),
    `kms_key_account` Nullable(String),
    `bytes_read` Nullable(UInt64),
    `config_change` Nullable(String)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (user_name, time)
TTL toDateTime(time) + INTERVAL 400 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS `{db}`.`alerts` (
    `uid` String,
    `title` String,
    `rule` LowCardinality(String),
    `rule_uid` String,
    `severity` LowCardinality(String),
    `severity_id` UInt8,
    `user` LowCardinality(String),
    `first_seen` DateTime64(3, 'UTC'),
    `detected_at` DateTime64(3, 'UTC'),
    `signal` LowCardinality(String),
    `observed` Float64,
    `threshold` Float64,
    `window_s` Float64,
    `file_count` UInt32,
    `paths` Array(String),
    `devices` Array(String),
    `shares` Array(String),
    `tags` Array(String),
    `description` String,
    `class_uid` UInt16,
    `version` UInt32,
    `last_seen` DateTime64(3, 'UTC'),
    `status` LowCardinality(String),
    `drill` Bool
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(detected_at)
ORDER BY (user, uid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS `{db}`.`deadletter` (
    `time` DateTime64(3, 'UTC'),
    `source` String,
    `reason` String,
    `key` Nullable(String),
    `raw` String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY time
SETTINGS non_replicated_deduplication_window = 1000;
