"""key=value logs on stderr, so a log shipper can parse them without a grammar."""
from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        force=True,
    )
    # aiokafka's (the worker's) reconnect noise becomes the one rate-limited "cannot reach Kafka" line.
    from dwcore.kafkalog import AiokafkaFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(AiokafkaFilter())
    # Chatty libraries: keep their warnings, drop their info lines.
    for noisy in ("watchdog", "aiokafka", "faust", "mode", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
