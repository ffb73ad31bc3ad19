"""key=value logs on stderr, so a log shipper can parse them without a grammar."""
from __future__ import annotations

import logging
import logging.config
from typing import Any

FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
# Chatty libraries: keep their warnings, drop their info lines.
NOISY = ("watchdog", "aiokafka", "faust", "mode", "urllib3", "botocore")
# faust's level names beside logging's
_ALIASES = {"warn": "WARNING", "crit": "CRITICAL"}


def level_of(name: str) -> int:
    return getattr(logging, _ALIASES.get(name.lower(), name.upper()), logging.INFO)


def logging_config(level: str = "info") -> dict[str, Any]:
    """The whole logging setup as a dictConfig: one stderr handler in key=value form, whose filter
    folds aiokafka's (the worker's) reconnect noise into the one rate-limited "cannot reach Kafka"
    line. The worker hands it to faust, which would otherwise install its own colored handler."""
    root = level_of(level)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"kv": {"format": FORMAT}},
        "filters": {"kafka": {"()": "dwcore.kafkalog.AiokafkaFilter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "kv",
                                "filters": ["kafka"]}},
        "root": {"level": root, "handlers": ["stderr"]},
        "loggers": {name: {"level": max(logging.WARNING, root)} for name in NOISY},
    }


def setup_logging(level: str = "info") -> None:
    logging.config.dictConfig(logging_config(level))
