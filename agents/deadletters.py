"""Records Kafka refuses for good: set aside on the dead-letter topic with the reason.

Used by the durable publisher: a record that can never be produced (too large, invalid) becomes a
DeadLetter (raw bytes cut to what still fits, the reason, the agent) on the dead-letter topic, like
every other refused message in dataward; the record leaves the spool only once that is acked.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from dwcore.logfmt import kv
from dwcore.schemas.codec import encode
from dwcore.schemas.deadletter import DeadLetter

log = logging.getLogger("dwcore.agents.publisher")

# Errors about the message itself: resending can never work, so the record is set aside whole.
PERMANENT = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
                       KafkaError.INVALID_RECORD})
# A dead letter must fit where its record did not: raw bytes are cut to this (base64 grows them 4/3).
DEADLETTER_RAW_MAX = 64 * 1024

OnDone = Callable[[KafkaError | None, object], None]


def raw_max_for(message_max_bytes: int) -> int:
    """How many raw bytes a dead letter may carry under the producer's message size limit."""
    return max(256, min(DEADLETTER_RAW_MAX, (message_max_bytes - 2048) * 3 // 4))


class DeadLetters:
    """Sends dead letters for one publisher and books their outcome in its ``counters``."""

    def __init__(self, producer: Producer, topic: str, deadletter_topic: str, device: str, raw_max: int,
                 counters: dict[str, int]) -> None:
        self._producer = producer
        self.topic = topic
        self.deadletter_topic = deadletter_topic
        self.device = device
        self.raw_max = raw_max
        self._counters = counters

    def send(self, err: KafkaError, key: bytes | None, value: bytes | None, on_done: OnDone) -> None:
        raw = value or b""
        reason = f"kafka refused the message on {self.topic}: {err.str()}"
        if len(raw) > self.raw_max:
            reason += f"; raw cut to its first {self.raw_max} of {len(raw)} bytes"
            raw = raw[: self.raw_max]
        letter = DeadLetter(raw=raw, key=key, reason=reason, source=f"agent:{self.device}",
                            time=int(time.time() * 1000))
        try:
            self._producer.produce(self.deadletter_topic, value=encode(letter), key=key, on_delivery=on_done)
        except BufferError:
            on_done(KafkaError(KafkaError._QUEUE_FULL), None)
        except KafkaException as exc:
            failure = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else KafkaError(
                KafkaError._FAIL, str(exc))
            on_done(failure, None)

    def settled(self, err: KafkaError | None) -> bool:
        """True when the record is settled (its dead letter delivered, or even that refused)."""
        if err is None:
            self._counters["rejected"] += 1
            log.error("record_deadlettered %s", kv(topic=self.topic, deadletter_topic=self.deadletter_topic))
            return True
        self._counters["errors"] += 1
        if err.code() in PERMANENT:
            # Even the cut-down dead letter was refused: nothing left to try; say so loudly.
            self._counters["lost"] += 1
            log.error("record_lost %s", kv(topic=self.topic, deadletter_topic=self.deadletter_topic,
                                           error=err.str()))
            return True
        return False
