"""The detectors' decisions on a fixed mixed workload stay exactly those recorded in
tests/data/detect_golden.json (rule, user, severity, status, version, counts, uid and a digest of
the whole alert): speed work must not change what is raised or how it is explained."""
from __future__ import annotations

import msgspec

from tests.detect_golden import GOLDEN, Summary, current


def test_mixed_workload_raises_exactly_the_recorded_alerts() -> None:
    expected = msgspec.json.decode(GOLDEN.read_bytes(), type=list[Summary])
    got = current()
    assert [(s.rule, s.user, s.severity, s.status, s.version, s.files, s.observed) for s in got] == \
        [(s.rule, s.user, s.severity, s.status, s.version, s.files, s.observed) for s in expected]
    assert got == expected  # uids and the full explanations too
    # Every attack in the workload is among them at high or critical.
    paged = {s.user.rsplit("/", 1)[-1] for s in got if s.severity in ("high", "critical")}
    assert {"mallory", "bob", "erin", "pat", "carl", "nina", "sam", "cody", "eve"} <= paged
