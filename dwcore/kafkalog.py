"""Kafka being away reads as one plain line, rate-limited, instead of a flood of client logs.

librdkafka logs every failed connect (several lines a second per client) and aiokafka logs every
failed metadata refresh. Both are routed here: connection trouble becomes
``cannot reach Kafka at HOST:PORT; <what is waiting>`` at most once per ``interval_s`` (the
process says what waits: the agent its spooled events, the sink and the worker that they are
paused), and one ``Kafka at HOST:PORT answers again`` line when it is back. Refused credentials
are their own plain line. Anything else librdkafka says goes to the logger
``dwcore.kafka.librdkafka`` at the matching level.

One instance per process (``HEALTH``); the wiring passes it to every librdkafka client through
the client configuration (``logger`` and ``error_cb``, see ``client_hooks``).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dwcore.kafka")
_client_log = logging.getLogger("dwcore.kafka.librdkafka")

# librdkafka and aiokafka phrasings of "the broker is not there".
_UNREACHABLE = re.compile(
    r"Connect to .* failed|Connection refused|brokers? (are|is) down|Failed to resolve|Broker transport failure"
    r"|Receive failed|Send failed|Connection reset|Timed out|Unable connect to node|Connect call failed"
    r"|Unable to update metadata|Unable to request metadata|KafkaConnectionError|NodeNotReadyError"
    r"|coordinator dead|Coordinator load in progress|RequestTimedOutError|Failed fetch messages|No route to host",
    re.IGNORECASE)
_AUTH = re.compile(r"SASL authentication|Authentication failed|invalid credentials|SaslAuthentication"
                   r"|SSL handshake failed|certificate verify failed", re.IGNORECASE)
_REASON = re.compile(r"failed: ([^(]+?)(?: \(after|$)")
_AUTH_REASON = re.compile(r"((?:SASL authentication error|SSL handshake failed|Authentication failed)[^(]*)")
# librdkafka's syslog levels as logging levels (as confluent-kafka maps them).
_AIOKAFKA = ("aiokafka", "kafka")


def _reason(text: str) -> str:
    found = _REASON.search(text)
    return (found.group(1) if found else text).strip()[:200]


class KafkaHealth:
    """Rate-limited state lines about the brokers, fed by client logs and error callbacks."""

    def __init__(self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.bootstrap = "?"
        self.interval_s = interval_s
        self._waiting: Callable[[], str] = lambda: "waiting for it"
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_down_report: float | None = None
        self._last_auth_report: float | None = None
        self._auth_failed_at: float | None = None
        self.reports = 0  # lines written about it, for tests and metrics

    def configure(self, bootstrap: str, waiting: Callable[[], str] | None = None,
                  interval_s: float | None = None) -> None:
        """Set by the process: the address to name, and what waits while Kafka is away."""
        self.bootstrap = bootstrap
        if waiting is not None:
            self._waiting = waiting
        if interval_s is not None:
            self.interval_s = interval_s

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def unreachable(self, reason: str) -> None:
        now = self._clock()
        if self._auth_failed_at is not None and now - self._auth_failed_at < max(self.interval_s, 10.0):
            return  # "all brokers down" right after refused credentials: the credentials line says it
        from dwcore.metrics import KAFKA_REACHABLE

        KAFKA_REACHABLE.set(0)
        with self._lock:
            if self._down_since is None:
                self._down_since = now
            due = self._last_down_report is None or now - self._last_down_report >= self.interval_s
            if due:
                self._last_down_report = now
                self.reports += 1
        if due:
            log.warning("cannot reach Kafka at %s; %s (%s)", self.bootstrap, self._safe_waiting(), _reason(reason))

    def refused(self, reason: str) -> None:
        now = self._clock()
        found = _AUTH_REASON.search(reason)
        reason = found.group(1) if found else reason
        with self._lock:
            self._auth_failed_at = now
            due = self._last_auth_report is None or now - self._last_auth_report >= self.interval_s
            if due:
                self._last_auth_report = now
                self.reports += 1
        if due:
            log.error("Kafka at %s refused dataward's credentials (%s); check kafka.sasl_username, the password "
                      "(DATAWARD_KAFKA_SASL_PASSWORD or kafka.sasl_password_file) and kafka.sasl_mechanism; %s",
                      self.bootstrap, reason.strip()[:300], self._safe_waiting())

    def reachable(self) -> None:
        """Called where a process knows the broker answered (an ack, an assignment, a fetch)."""
        if self._down_since is None:
            return
        from dwcore.metrics import KAFKA_REACHABLE

        KAFKA_REACHABLE.set(1)
        with self._lock:
            since, self._down_since = self._down_since, None
            self._last_down_report = None
        if since is not None:
            log.info("Kafka at %s answers again after %.0f s; %s", self.bootstrap, self._clock() - since,
                     self._safe_waiting())

    def _safe_waiting(self) -> str:
        try:
            return self._waiting()
        except Exception:  # a status callback must never break logging
            return "waiting for it"

    # -- librdkafka hooks: confluent-kafka calls logger.log(level, "%s [%s] %s", fac, name, text)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        text = fmt % args if args else fmt
        self.client_line(level, text)

    def client_line(self, level: int, text: str) -> None:
        if _AUTH.search(text):
            self.refused(text)
        elif _UNREACHABLE.search(text):
            self.unreachable(text)
        else:
            _client_log.log(level, "%s", text)

    def error_cb(self, err: Any) -> None:
        """librdkafka's error callback (a KafkaError)."""
        text = err.str() if hasattr(err, "str") else str(err)
        name = err.name() if hasattr(err, "name") else ""
        if "AUTHENTICATION" in name or _AUTH.search(text):
            self.refused(text)
        elif name in ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_TIMED_OUT") or _UNREACHABLE.search(text):
            self.unreachable(text)
        else:
            _client_log.warning("kafka_client_error code=%s error=%s", name, text)


HEALTH = KafkaHealth()


def client_hooks() -> dict[str, Any]:
    """librdkafka settings that route a client's logs and errors through ``HEALTH``."""
    return {"logger": HEALTH, "error_cb": HEALTH.error_cb}


class AiokafkaFilter(logging.Filter):
    """On a handler: aiokafka's (the worker's) connection noise becomes ``HEALTH``'s line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_AIOKAFKA) or record.levelno < logging.INFO:
            return True
        try:
            text = record.getMessage()
        except Exception:
            return True
        if _AUTH.search(text):
            HEALTH.refused(text)
            return False
        if _UNREACHABLE.search(text):
            HEALTH.unreachable(text)
            return False
        return True
