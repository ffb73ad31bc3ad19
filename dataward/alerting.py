"""Wiring for alert delivery: config -> destinations (with their secrets) -> an AlertRouter.

Secrets never sit in the YAML: per destination NAME (upper-cased, ``-`` as ``_``)
- webhook: the ``whsec_`` signing secret from ``DATAWARD_ALERTS_<NAME>_SECRET`` or ``secret_file``;
- pagerduty: the routing key, the same way; ``url`` defaults to the Events API v2 endpoint;
- slack, teams: the webhook URL is the credential: ``DATAWARD_ALERTS_<NAME>_URL``, else the
  contents of ``secret_file``, else ``url``.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from dataward.config import Config, ConfigError, DestinationConfig
from dataward.datadir import DataDirLock
from dwcore.backoff import Backoff
from dwcore.schemas.alert import Alert
from dwcore.schemas.delivery import Delivery
from dwcore.sinks.alert_formats import PAGERDUTY_EVENTS_URL
from dwcore.sinks.alert_router import AlertRouter
from dwcore.sinks.alert_routing import DEFAULT_RATE_PER_MINUTE, Destination
from dwcore.sinks.signing import SignatureError, secret_key

log = logging.getLogger(__name__)


def env_name(name: str, what: str) -> str:
    return f"DATAWARD_ALERTS_{name.upper().replace('-', '_')}_{what}"


def _file(path: str, dest: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"alerts destination {dest!r}: cannot read secret_file: {exc.strerror}") from None


def resolve(dc: DestinationConfig, env: Mapping[str, str] | None = None) -> Destination:
    """A destination with its secrets read; ConfigError names what is missing (never the value)."""
    env = os.environ if env is None else env
    secret, url = "", dc.url
    if dc.kind in ("webhook", "pagerduty"):
        secret = env.get(env_name(dc.name, "SECRET")) or (_file(dc.secret_file, dc.name) if dc.secret_file else "")
        if not secret:
            what = "signing secret (whsec_...)" if dc.kind == "webhook" else "routing key"
            raise ConfigError(f"alerts destination {dc.name!r}: no {what}: set secret_file or "
                              f"{env_name(dc.name, 'SECRET')}")
        if dc.kind == "webhook":
            try:
                secret_key(secret)
            except SignatureError as exc:
                raise ConfigError(f"alerts destination {dc.name!r}: {exc}") from None
        url = url or (PAGERDUTY_EVENTS_URL if dc.kind == "pagerduty" else "")
    else:
        url = env.get(env_name(dc.name, "URL")) or (_file(dc.secret_file, dc.name) if dc.secret_file else "") or url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        where = "url" if dc.kind in ("webhook", "pagerduty") else f"secret_file or {env_name(dc.name, 'URL')}"
        raise ConfigError(f"alerts destination {dc.name!r}: needs an http(s)://host/... URL (from {where})")
    rate = DEFAULT_RATE_PER_MINUTE[dc.kind] if dc.rate_per_minute is None else dc.rate_per_minute
    return Destination(
        name=dc.name, kind=dc.kind, url=url, secret=secret, min_severity=dc.min_severity,
        rules=tuple(dc.rules), users=tuple(dc.users), user_groups=tuple(dc.user_groups), tags=tuple(dc.tags),
        rate_per_minute=rate, timeout_s=dc.timeout_s,
    )


def destinations(cfg: Config, env: Mapping[str, str] | None = None) -> list[Destination]:
    names = [d.name for d in cfg.alerts.destinations]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"alerts destinations: duplicate names {', '.join(dupes)}")
    return [resolve(d, env) for d in cfg.alerts.destinations]


def build_router(cfg: Config, record: Callable[[list[Delivery]], object], **kw: object) -> AlertRouter:
    dests = destinations(cfg)
    a = cfg.alerts
    return AlertRouter(
        cfg.outbox_dir, dests, record,
        backoff=lambda: Backoff(a.retry_initial_s, a.retry_max_s),
        **kw,  # type: ignore[arg-type]
    )


def run_alert_deliverer(config: Config, stop: threading.Event, ready: Callable[[], None] | None = None) -> int:
    """The distributed deliverer: ``dw.alerts`` -> outbox -> destinations, attempts recorded in the
    store, until ``stop``. The data dir (outbox, and chDB when no server is configured) has one
    owner: two deliverers on one outbox would page twice. Returns how many alerts were queued."""
    from dataward.distributed import ensure_all_topics, topics_of
    from dwcore.sinks.alert_consumer import run_alert_consumer
    from dwcore.sinks.batcher import Batcher
    from dwcore.sinks.query_auth import ensure_token
    from dwcore.sinks.query_server import QueryServer
    from dwcore.sinks.store import open_when_available

    dests = destinations(config)
    if not dests:
        raise ConfigError("no alert destinations configured (alerts: destinations: in the config file)")
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(config.data_dir).acquire()
    store = server = recorder = router = None
    try:
        ensure_all_topics(config)
        store = open_when_available(config.store_dsn, config.store.database, config.store.retention_days,
                                    stop.wait, Backoff(0.2, 30.0).next, config.store.ttl_days)
        if store is None:
            return 0
        if store.embedded:
            server = QueryServer(store.reader, config.query.host, config.query.port,
                                 token=ensure_token(config.query_token_file), limits=config.query.limits()).start()
            server.write_addr_file(config.query_addr_file)
        recorder = Batcher(store.writer.insert_deliveries, batch_rows=1_000,
                           flush_interval_s=config.store.flush_interval_s, name="deliveries")
        recorder.start()
        router = build_router(config, recorder.add_many)
        router.start()
        topics = topics_of(config)
        return run_alert_consumer(config.kafka.client_config(), f"{config.kafka.topic_prefix}dataward-alerts-deliver",
                                  topics.alerts, router, stop, ready)
    finally:
        if router is not None:
            router.stop()
        if recorder is not None:
            recorder.close()
        if server is not None:
            server.stop()
        if store is not None:
            store.close()
        lock.release()


def announce(
    config: Config,
    alerts: list[Alert],
    record: Callable[[list[Delivery]], object] = lambda rows: None,
    grace_s: float = 5.0,
) -> str:
    """Hand alert versions made outside detection (``dataward incident resolve``) to delivery.

    With a ClickHouse server (the distributed mode) they go to ``dw.alerts``, acknowledged, where
    ``dataward alerts deliver`` and the sink take them. Otherwise (embedded; the caller holds the
    data dir, so no ``dataward run`` is using it) they go into the local outbox and are delivered
    now, for up to ``grace_s``; what is left goes out with the next ``dataward run``."""
    if config.store.url:
        from dataward.distributed import topics_of
        from dwcore.stream.alert_producer import DurableAlertPublisher

        publisher = DurableAlertPublisher(config.kafka.client_config(), topics_of(config).alerts, timeout_s=30)
        try:
            publisher(alerts)
        finally:
            publisher.close()
        return "the alerts topic"
    if not config.alerts.destinations:
        return "nowhere (no alert destinations configured)"
    router = build_router(config, record)
    router.commit(alerts)
    router.start()
    router.stop(grace_s)
    left = router.outbox.pending
    return "the configured destinations" + (f" ({left} still queued in the outbox)" if left else "")
