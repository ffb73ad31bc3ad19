"""`dataward topics create` against a broker that is not there: a clear error within ~10 s
(the probe saw it hang for more than 25 s)."""
from __future__ import annotations

import socket
import time

import pytest

from dwcore.agents.kafka_admin import BrokerUnreachable, choose_durability
from tests.procs import run_cli


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_broker_is_a_clear_error_within_the_timeout():
    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=f"127.0.0.1:{port} did not answer within 10 s"):
        choose_durability({"bootstrap.servers": f"127.0.0.1:{port}"})
    assert time.monotonic() - t0 < 12
    res = run_cli("topics", "create", "--bootstrap", f"127.0.0.1:{port}", timeout=60)
    assert res.returncode == 2
    assert "cannot create topics" in res.stderr and "did not answer within 10 s" in res.stderr
    assert "Traceback" not in res.stderr
