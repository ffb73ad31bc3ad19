"""Kafka down reads as one plain line, rate-limited: real `dataward` processes against a port where
nothing listens. Before, a dead broker flooded the agent's stderr with ~20 raw librdkafka lines a
second and the topic check logged an empty error."""
from __future__ import annotations

import re
import socket
import time

import pytest

from tests.procs import wait_for

pytestmark = pytest.mark.e2e

REPORT_S = 2.0
LINE = re.compile(r"cannot reach Kafka at 127\.0\.0\.1:(\d+); (.*)")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def _lines(proc) -> list[str]:
    return proc.log_path.read_text().splitlines()


def _check_plain(lines: list[str], port: int, elapsed: float) -> list[re.Match]:
    reports = [m for m in (LINE.search(line) for line in lines) if m]
    assert reports, "\n".join(lines)
    assert all(int(m.group(1)) == port for m in reports)
    # rate-limited: one line per REPORT_S at most (plus the first)
    assert len(reports) <= elapsed / REPORT_S + 2, "\n".join(lines)
    # nothing raw from the client library, every line is the project's key=value log format
    assert not [line for line in lines if "rdkafka" in line or line.startswith("%")], "\n".join(lines)
    assert all(line.startswith("ts=") for line in lines), "\n".join(lines)
    assert len(lines) <= 30, "\n".join(lines)
    return reports


def test_agent_with_kafka_down_says_so_once_per_interval_with_the_spooled_count(tmp_path, dataward_proc):
    port = _dead_port()
    share = tmp_path / "share"
    share.mkdir()
    started = time.monotonic()
    agent = dataward_proc("agent", "file", "--watch", str(share), "--bootstrap", f"127.0.0.1:{port}",
                          "--data-dir", str(tmp_path / "a"), "--device", "down",
                          env={"DATAWARD_KAFKA_UNREACHABLE_REPORT_S": str(REPORT_S)})
    agent.wait_ready(90)
    for i in range(10):
        (share / f"f{i}.txt").write_text("x")

    def counted() -> bool:
        return any((m := LINE.search(line)) and re.match(r"([1-9]\d*) events spooled", m.group(2))
                   for line in _lines(agent))

    wait_for(counted, 60, what="a line with the spooled count")
    time.sleep(3 * REPORT_S)  # the rate limit is what is under test: let it be exercised
    lines = _lines(agent)
    reports = _check_plain(lines, port, time.monotonic() - started)
    assert re.match(r"\d+ events spooled", reports[-1].group(2))
    # the topic check names its real error, never an empty one
    check = [line for line in lines if "topic_check_failed" in line]
    assert check and 'error=""' not in check[0] and f'error="Kafka at 127.0.0.1:{port} ' in check[0], check
    assert agent.stop() == 0


def test_sink_with_kafka_down_waits_and_says_so_once_per_interval(tmp_path, dataward_proc):
    port = _dead_port()
    started = time.monotonic()
    sink = dataward_proc("sink", "clickhouse", "--bootstrap", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "s"),
                         env={"DATAWARD_KAFKA_UNREACHABLE_REPORT_S": str(REPORT_S)})
    wait_for(lambda: any(LINE.search(line) for line in _lines(sink)), 90, what="the sink's line")
    time.sleep(3 * REPORT_S)
    assert sink.proc.poll() is None, "the sink must wait for Kafka, not die"
    reports = _check_plain(_lines(sink), port, time.monotonic() - started)
    assert "sink waiting" in reports[0].group(2)
    assert "Traceback" not in sink.log_path.read_text()
    assert sink.stop() == 0
