"""Topic creation shared by agents and the stream workers: idempotent, exists is fine."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NamedTuple

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from dwcore.kafkalog import HEALTH, client_hooks
from dwcore.logfmt import kv

log = logging.getLogger(__name__)


# Admin errors that mean "no broker answered", not "the broker said no".
_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                          KafkaError._RESOLVE})


class BrokerUnreachable(RuntimeError):
    """No broker answered within the timeout: a clear error instead of a hang or a traceback."""


class CredentialsRefused(BrokerUnreachable):
    """The broker answered and refused the SASL/TLS credentials."""


_AUTH_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})


class _Errors:
    """An admin client's error callback that remembers refused credentials (and tells HEALTH)."""

    def __init__(self) -> None:
        self.auth: str = ""

    def __call__(self, err: KafkaError) -> None:
        if err.code() in _AUTH_CODES and not self.auth:
            self.auth = err.str()
        HEALTH.error_cb(err)

    def raise_if_refused(self, admin: AdminClient, bootstrap: object) -> None:
        admin.poll(0.5)  # serve the queued callbacks: the reason is in them
        if self.auth:
            raise CredentialsRefused(f"Kafka at {bootstrap} refused the credentials: {self.auth}; check "
                                     "kafka.sasl_username, the password (DATAWARD_KAFKA_SASL_PASSWORD or "
                                     "kafka.sasl_password_file) and kafka.sasl_mechanism") from None


class Durability(NamedTuple):
    """How topics are replicated on this cluster, and why."""

    brokers: int
    replication_factor: int
    min_insync_replicas: int

    def describe(self) -> str:
        return (f"replication factor {self.replication_factor}, min.insync.replicas "
                f"{self.min_insync_replicas} ({self.brokers} broker{'s' if self.brokers != 1 else ''})")


def choose_durability(client_config: Mapping[str, str], timeout: float = 10.0) -> Durability:
    """Replication factor 3 and min.insync.replicas 2 on a cluster of three brokers or more, so
    that with acks=all one broker can die without losing an acknowledged event or stopping
    producers; a smaller cluster gets what it can hold."""
    errors = _Errors()
    conf: dict[str, object] = {**client_hooks(), **client_config, "error_cb": errors}  # not a stderr line per retry
    conf["socket.timeout.ms"] = str(int(timeout * 1000))
    admin = AdminClient(conf)
    try:
        brokers = len(admin.list_topics(timeout=timeout).brokers)
    except KafkaException as exc:
        errors.raise_if_refused(admin, client_config.get("bootstrap.servers"))
        err = exc.args[0] if exc.args else None
        what = err.str() if isinstance(err, KafkaError) else str(exc)
        raise BrokerUnreachable(
            f"Kafka at {client_config.get('bootstrap.servers')} did not answer within {timeout:g} s ({what}); "
            "check --bootstrap / KAFKA_BOOTSTRAP, the broker and the security settings"
        ) from None
    if brokers >= 3:
        return Durability(brokers, 3, 2)
    return Durability(brokers, max(brokers, 1), 1)


def ensure_topics(client_config: Mapping[str, str], names: list[str], partitions: int, *,
                  replication_factor: int = -1, timeout: float = 30.0,
                  topic_config: Mapping[str, str] | None = None) -> list[str]:
    """Creates the topics that do not exist yet; returns the names it created.

    ``client_config`` is the librdkafka client settings (bootstrap, security).
    ``replication_factor=-1`` takes the broker's default. Raises KafkaException when the broker
    cannot be reached or refuses for another reason than "already exists".
    """
    if not names:
        return []
    errors = _Errors()
    conf: dict[str, object] = {**client_hooks(), **client_config, "error_cb": errors}
    conf["socket.timeout.ms"] = str(int(timeout * 1000))
    admin = AdminClient(conf)
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor,
                       config=dict(topic_config or {})) for n in names]
    created: list[str] = []
    for name, fut in admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except TimeoutError:
            errors.raise_if_refused(admin, client_config.get("bootstrap.servers"))
            raise BrokerUnreachable(f"Kafka at {client_config.get('bootstrap.servers')} did not answer within "
                                    f"{timeout:g} s while creating {name}") from None
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if isinstance(err, KafkaError) and err.code() in _UNREACHABLE:
                errors.raise_if_refused(admin, client_config.get("bootstrap.servers"))
                raise BrokerUnreachable(f"Kafka at {client_config.get('bootstrap.servers')} could not create "
                                        f"{name}: {err.str()}") from None
            raise
    if created:
        log.info("topics_created %s", kv(names=",".join(created), partitions=partitions))
    return created
