"""Configuration in one typed place.

Precedence: defaults < YAML file (``--config`` or ``DATAWARD_CONFIG``) < environment
(``DATAWARD_<SECTION>_<FIELD>``, plus the conventional ``KAFKA_BOOTSTRAP`` and ``CLICKHOUSE_URL``)
< explicit CLI flags. Unknown keys are errors, so a typo never silently falls back to a default.
Secrets (SASL password, webhook keys) come only from the environment or a file, never the YAML.
"""
from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import yaml

if TYPE_CHECKING:
    from dwcore.sinks.query_server import QueryLimits


class ConfigError(ValueError):
    pass


class KafkaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port...]
    topic_prefix: str = ""  # tests use a fresh prefix per test; production leaves it empty
    partitions: int = 6  # for topics dataward creates; scale-out is by partitions
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    sasl_mechanism: str = ""  # e.g. SCRAM-SHA-512, PLAIN; empty: no SASL
    sasl_username: str = ""
    sasl_password_file: str = ""
    ssl_ca_file: str = ""  # CA bundle for SSL/SASL_SSL brokers; empty: the system's trust store
    # How long the broker waits for a consumer that died before it hands its partitions to another
    # (the sink after a kill -9); librdkafka's default is 45 s.
    session_timeout_ms: int = 45_000  # the password itself only via DATAWARD_KAFKA_SASL_PASSWORD
    # While no broker answers, one line "cannot reach Kafka at HOST:PORT; ..." at most this often.
    unreachable_report_s: float = 30.0

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by producers, consumers and admin clients (a fresh copy; the
        secret file is read once per configuration). Every client logs through the process's one
        Kafka health reporter (dwcore.kafkalog): a dead broker is one rate-limited line."""
        from dwcore.kafkalog import HEALTH, client_hooks

        HEALTH.configure(self.bootstrap, interval_s=self.unreachable_report_s)
        # log.connection.close off: an idle connection the broker closes is not news.
        return {**self._client_config, **client_hooks(), "log.connection.close": False}

    @cached_property
    def _client_config(self) -> dict[str, str]:
        conf = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = read_secret("DATAWARD_KAFKA_SASL_PASSWORD", self.sasl_password_file)
        if self.ssl_ca_file:
            conf["ssl.ca.location"] = self.ssl_ca_file
        return conf


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Empty means the embedded default: chDB in <data_dir>/chdb.
    url: str = ""
    database: str = "dataward"  # letters, digits and _
    batch_rows: int = 10_000  # ClickHouse wants 10k-100k rows about once a second
    flush_interval_s: float = 1.0  # a partial batch is written after this long
    retention_days: int = 400  # events older than this are dropped with whole parts (1..20000)
    # Per-table retention in days, overriding the defaults derived from retention_days
    # (e.g. {heartbeats: 7, alerts: 1200}); see schemas/migrations.py table_ttl_days.
    ttl_days: dict[str, int] = {}
    seal_interval_s: float = 5.0  # how often stored events are sealed into custody blocks


class QueryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Loopback only: the endpoint is read-only but forensic data is still sensitive.
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port; the chosen address is written to <data_dir>/query.addr
    timeout_s: float = 60.0  # max_execution_time of one query (a client may lower it, never raise it)
    max_memory_bytes: int = 1 << 30  # max_memory_usage of one query
    max_result_rows: int = 1_000_000  # rows one answer may have
    max_result_bytes: int = 256 << 20  # bytes one answer may have
    max_connections: int = 64  # open connections; at the bound the longest-waiting idle one is closed
    max_concurrent_queries: int = 4  # threads that run queries; more requests wait their turn
    idle_timeout_s: float = 30.0  # a keep-alive connection without a request is closed after this

    def limits(self) -> QueryLimits:
        from dwcore.sinks.query_server import QueryLimits

        return QueryLimits(**{name: getattr(self, name) for name in QueryLimits.__struct_fields__})


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: str = ""  # defaults to the host name
    watch: list[str] = []
    spool_dir: str = ""  # defaults to <data_dir>/spool
    tune_inotify: bool = True  # raise fs.inotify.max_queued_events at start when allowed (root)


class ContentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What was written: bounded samples of created and modified files (see docs/agents.md)."""

    enabled: bool = True
    bytes_per_s: int = 32 * 1024 * 1024  # read budget; writes beyond it get sample_skipped=budget (0 = no cap)
    head_bytes: int = 4096
    middle_bytes: int = 4096
    tail_bytes: int = 4096
    cache_bytes: int = 16 * 1024 * 1024  # previous samples kept to spot partial encryption
class BackupConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bucket: str = ""  # empty: no backup (embedded: --backup-bucket)
    prefix: str = ""
    endpoint_url: str = ""  # empty: AWS; e.g. http://127.0.0.1:9000 for MinIO
    region: str = ""
    journal_dir: str = ""  # defaults to <data_dir>/backup
    # Zero trust: which alerts halt the backup.
    halt_severity: str = "high"  # low | medium | high | critical
    protect_users: list[str] = []  # empty: an alert about any user halts
    protect_paths: list[str] = []  # empty: an alert about any path halts
    halt_on_drill: bool = True
    tag_suspects: bool = True  # S3 tag dataward-suspect=<incident> on suspect versions
    # Hook mode: pause/resume an external backup job the same way (command without a shell, or POST).
    pause_command: str = ""
    pause_url: str = ""
    resume_command: str = ""
    resume_url: str = ""
    # Upload tuning.
    part_size_mb: int = 8
    multipart_threshold_mb: int = 8
    concurrency: int = 4
    debounce_s: float = 0.2
    checkpoint_s: float = 300.0  # continuous mode: a manifest in the bucket this often


class S3Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Buckets watched with the strict s3_protected_bucket rule: the one holding dataward's backups.
    protected_buckets: list[str] = []
    endpoint_url: str = ""  # S3-compatible store (MinIO, ...); empty: AWS
    region: str = ""  # empty: the AWS chain's default
    poll_interval_s: float = 10.0  # log-bucket listings and version polls
    notification_topic: str = "dw.s3.notifications"  # where a bridge puts S3 event notifications
    notification_group: str = "dataward-s3-notifications"


class AuditConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who did it: audit logs joined with watcher events; unmatched events keep the owner guess."""

    auditd_log: str = ""  # e.g. /var/log/audit/audit.log, with agents/data/dataward.rules loaded
    samba_log: str = ""  # the syslog file that receives smbd_audit (vfs_full_audit) lines
    samba_prefix: str = "%u|%I|%m|%S"  # the shares' full_audit:prefix
    samba_shares: dict[str, str] = {}  # share name -> local directory
    window_ms: int = 2000  # an audit record this close in time to a watcher event can match it
    wait_ms: int = 50  # how long a batch may wait for the audit log to catch up


class CanaryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Decoys planted by `dataward agent canary plant`, recorded in <data_dir>/canaries.json."""

    enabled: bool = True
    watch_reads: bool = True  # also report reads of canaries (inotify on the canary files only)
    grace_ms: int = 2000  # planting's own writes right after planting are not touches


class ResponseHookConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min_severity: str  # low | medium | high | critical
    command: list[str]  # argv, no shell; placeholders {user} {rule} {severity} {alert_uid} {devices} {shares}
    name: str = ""


class ResponseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The agent's fast path: detectors on its own events, local alerts and response hooks."""

    fastpath: bool = True  # run the detectors in the file agent (distributed mode)
    alerts_jsonl: str = ""  # default <data_dir>/agent-alerts.jsonl
    publish_alerts: bool = True  # also produce the agent's alerts to dw.alerts
    dry_run: bool = True  # record what a hook would run, run nothing (turn off once reviewed)
    timeout_s: float = 10.0
    allow_users: list[str] = []  # never acted on (service accounts, the backup user)
    audit_file: str = ""  # default <data_dir>/responses.jsonl
    hooks: list[ResponseHookConfig] = []


class CaptureConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Never blind: how the file agent captures, and how it catches up on what it could not see."""

    backend: str = "auto"  # auto (inotify on Linux, else watchdog) | inotify | watchdog
    rescan_at_start: bool = True  # diff the trees against the snapshot in <data_dir>/state
    rescan_on_overflow: bool = True  # after an inotify queue overflow
    snapshot_at_stop: bool = True
    spool_max_bytes: int = 2 * 1024**3  # beyond it: a loud spool_full alarm, new events held in memory
    heartbeat_s: float = 30.0  # heartbeats to dw.heartbeats (0 = off)


class DestinationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One place alerts go. Secrets (webhook signing secret, PagerDuty routing key, or the Slack/Teams
    URL itself) come from ``secret_file`` or ``DATAWARD_ALERTS_<NAME>_SECRET`` / ``_URL``; see docs/alerts.md."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
    kind: Literal["webhook", "slack", "teams", "pagerduty"]
    url: str = ""
    secret_file: str = ""
    min_severity: Literal["low", "medium", "high", "critical"] = "low"
    rules: list[str] = []
    users: list[str] = []
    user_groups: list[str] = []
    tags: list[str] = []
    rate_per_minute: float | None = None  # default per kind: slack/teams 60, pagerduty 120, webhook none
    timeout_s: float = 10.0


class AlertsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where alerts go: Slack, Teams, PagerDuty, signed webhooks, through a durable outbox (docs/alerts.md)."""

    destinations: list[DestinationConfig] = []  # name, kind, url, secret_file, filters: see docs/alerts.md
    outbox_dir: str = ""  # defaults to <data_dir>/outbox
    retry_initial_s: float = 0.5  # first retry delay; doubles per failure, with jitter
    retry_max_s: float = 60.0  # cap of the retry delay


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Prometheus /metrics of each long-running process (docs/deploy.md#metrics); a port of 0 is off."""

    host: str = "127.0.0.1"  # loopback: put a scraper beside it, or set 0.0.0.0 behind a firewall
    agent_port: int = 0  # dataward agent file, agent s3 logs|poll|notifications (e.g. 9464)
    worker_port: int = 0  # dataward worker (e.g. 9465)
    sink_port: int = 0  # dataward sink clickhouse (e.g. 9466)
    backup_port: int = 0  # dataward backup controller, backup run --continuous|--every (e.g. 9467)
    run_port: int = 0  # dataward run, the embedded mode (e.g. 9468)


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data_dir: str = ".dataward"  # state: chDB store, spools, outbox, tokens (0700, owner-only files)
    policy_file: str = ""  # detection policy YAML; empty: the built-in default policy
    alerts_jsonl: str = ""  # also append every alert as one JSON line to this file
    kafka: KafkaConfig = KafkaConfig()
    store: StoreConfig = StoreConfig()
    query: QueryConfig = QueryConfig()
    agent: AgentConfig = AgentConfig()
    content: ContentConfig = ContentConfig()
    s3: S3Config = S3Config()
    audit: AuditConfig = AuditConfig()
    canary: CanaryConfig = CanaryConfig()
    response: ResponseConfig = ResponseConfig()
    capture: CaptureConfig = CaptureConfig()
    backup: BackupConfig = BackupConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def device(self) -> str:
        return self.agent.device or socket.gethostname()

    @property
    def store_dsn(self) -> str:
        return self.store.url or f"chdb://{Path(self.data_dir).resolve() / 'chdb'}"

    @property
    def spool_dir(self) -> Path:
        return Path(self.agent.spool_dir or Path(self.data_dir) / "spool")

    @property
    def models_dir(self) -> Path:
        """Where `dataward model train` writes baselines and the pipelines load them from."""
        return Path(self.data_dir) / "models"

    @property
    def outbox_dir(self) -> Path:
        return Path(self.alerts.outbox_dir or Path(self.data_dir) / "outbox")

    @property
    def query_addr_file(self) -> Path:
        return Path(self.data_dir) / "query.addr"

    @property
    def parked_dir(self) -> Path:
        """Rows the store could not take yet, replayed when it answers again."""
        return Path(self.data_dir) / "parked"

    @property
    def query_token_file(self) -> Path:
        # Owner-only (0600): the password of the query endpoint, user "dataward".
        return Path(self.data_dir) / "query.token"

    @property
    def faust_dir(self) -> Path:
        """faust's local files (it would otherwise write ``<app-id>-data/`` into the working dir)."""
        return Path(self.data_dir) / "faust"

    @property
    def backup_dir(self) -> Path:
        return Path(self.backup.journal_dir or Path(self.data_dir) / "backup")


def read_secret(env_var: str, file_path: str = "") -> str:
    """A secret from the environment, else from a file (e.g. a mounted Kubernetes secret)."""
    value = os.environ.get(env_var)
    if value:
        return value
    file_var = os.environ.get(f"{env_var}_FILE") or file_path
    if file_var:
        return Path(file_var).read_text().strip()
    return ""


_SECTIONS = {"kafka": KafkaConfig, "store": StoreConfig, "query": QueryConfig, "agent": AgentConfig,
             "content": ContentConfig, "s3": S3Config, "audit": AuditConfig,
             "canary": CanaryConfig, "response": ResponseConfig, "capture": CaptureConfig,
             "backup": BackupConfig, "alerts": AlertsConfig, "metrics": MetricsConfig}


# DATAWARD_* variables that are not configuration keys: the config file's path, the scripts'
# cache, and secrets (read where they are used, never from YAML).
_NON_CONFIG_ENV = frozenset({"DATAWARD_CONFIG", "DATAWARD_CACHE"})
_SECRET_ENV = re.compile(r"^DATAWARD_[A-Z0-9_]*(PASSWORD|SECRET|TOKEN|KEY)(_FILE)?$")
# Slack and Teams webhook URLs are credentials: DATAWARD_ALERTS_<NAME>_URL (dataward/alerting.py).
_ALERT_URL_ENV = re.compile(r"^DATAWARD_ALERTS_[A-Z0-9_]+_URL$")


def env_name(section: str, field: str) -> str:
    """The environment variable that overrides a key: DATAWARD_<SECTION>_<FIELD>."""
    return f"DATAWARD_{section}_{field}".upper() if section else f"DATAWARD_{field}".upper()


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if env.get("KAFKA_BOOTSTRAP"):
        out.setdefault("kafka", {})["bootstrap"] = env["KAFKA_BOOTSTRAP"]
    if env.get("CLICKHOUSE_URL"):
        out.setdefault("store", {})["url"] = env["CLICKHOUSE_URL"]
    unknown: list[str] = []
    for key, value in env.items():
        if (not key.startswith("DATAWARD_") or key in _NON_CONFIG_ENV or _SECRET_ENV.match(key)
                or _ALERT_URL_ENV.match(key)):
            continue
        rest = key[len("DATAWARD_") :].lower()
        section, _, field = rest.partition("_")
        if section in _SECTIONS and field in _SECTIONS[section].__struct_fields__:
            default = getattr(_SECTIONS[section](), field)
            if isinstance(default, list):  # lists: comma-separated
                out.setdefault(section, {})[field] = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(default, dict):
                unknown.append(f"{key} (a mapping: set it in the config file)")
            else:
                out.setdefault(section, {})[field] = value
        elif rest in Config.__struct_fields__ and rest not in _SECTIONS:
            out[rest] = value
        else:
            unknown.append(key)
    if unknown:
        # A typo must not silently fall back to a default (docs/config.md lists every variable).
        raise ConfigError(f"unknown environment variable(s): {', '.join(sorted(unknown))}; see docs/config.md")
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        elif value is not None:
            merged[key] = value
    return merged


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get("DATAWARD_CONFIG")
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    data = _merge(data, _env_overrides(env))
    data = _merge(data, overrides or {})
    try:
        # strict=False so that environment strings like "6" and "1.5" convert to int/float.
        return msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"configuration{f' in {path}' if path else ''}: {exc}") from None
