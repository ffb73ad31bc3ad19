"""The worker joins the same secured cluster as every other process: faust gets the broker
credentials from the one librdkafka client configuration (security protocol, SASL mechanism,
user and password, CA file), not just the broker address."""
from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

_SASL = ("SASL_PLAINTEXT", "SASL_SSL")


class KafkaAuthError(ValueError):
    pass


def faust_broker_settings(client_config: Mapping[str, str]) -> dict[str, Any]:
    """faust App settings (``broker_credentials``) for a librdkafka client configuration."""
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = str(client_config.get("security.protocol", "PLAINTEXT")).upper()
    if protocol == "PLAINTEXT":
        return {}
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=client_config.get("ssl.ca.location") or None)
    if protocol == "SSL":
        return {"broker_credentials": SSLCredentials(context)}
    if protocol not in _SASL:
        raise KafkaAuthError(f"unsupported kafka security protocol {protocol!r}")
    mechanism = client_config.get("sasl.mechanism") or ""
    if not mechanism:
        raise KafkaAuthError(f"security protocol {protocol} needs kafka.sasl_mechanism (e.g. SCRAM-SHA-512)")
    return {
        "broker_credentials": SASLCredentials(
            username=client_config.get("sasl.username") or None,
            password=client_config.get("sasl.password") or None,
            ssl_context=context,
            mechanism=mechanism,
        )
    }
