from __future__ import annotations

import msgspec

from dwcore.schemas.alert import Alert, Severity
from dwcore.sinks.jsonl import AlertJsonlWriter


def alert(uid: str, description: str = "") -> Alert:
    return Alert(uid=uid, title="Bulk delete", rule="bulk_delete", rule_uid="r1", severity=Severity.CRITICAL,
                 severity_id=5, user="eve", first_seen=1, detected_at=2, signal="deletes", observed=900,
                 threshold=100, window_s=60, file_count=900, paths=["/a"], description=description)


def test_appends_one_full_alert_per_line(tmp_path):
    path = tmp_path / "out" / "alerts.jsonl"
    with AlertJsonlWriter(path) as w:
        w.write(alert("a1", description="line1\nline2"))
        # on disk before close: a tailing SIEM sees it at once
        assert len(path.read_bytes().splitlines()) == 1
    with AlertJsonlWriter(path) as w:
        w.write_many([alert("a2"), alert("a3")])
    lines = path.read_bytes().splitlines()
    assert [msgspec.json.decode(line, type=Alert).uid for line in lines] == ["a1", "a2", "a3"]
    first = msgspec.json.decode(lines[0])
    assert set(first) == set(Alert.__struct_fields__)  # every field, defaults included
    assert first["description"] == "line1\nline2" and first["severity"] == "critical"


def test_dash_means_stdout(capsysbinary):
    w = AlertJsonlWriter("-")
    w.write(alert("s1"))
    out = capsysbinary.readouterr().out
    assert msgspec.json.decode(out.strip(), type=Alert).uid == "s1"
