"""The contracts: what producers in any language may send, and what the pipeline rejects."""
from __future__ import annotations

import msgspec
import pytest

from dwcore.schemas import Activity, DecodeError, decode_event, encode
from dwcore.schemas.event import make_event
from dwcore.schemas.generate import CONTRACTS, SCHEMA_DIR, drifted, render


def _rename(**kw):
    fields = dict(uid="e1", time=1_700_000_000_123, user_name="alice", device="fs1",
                  file_path="/data/a.csv", file_new_path="/data/a.csv.locked")
    fields.update(kw)
    return make_event(Activity.RENAME, **fields)


def test_event_roundtrips_with_ocsf_activity_pair():
    ev = _rename(entropy=7.9, bytes_written=4096)
    back = decode_event(encode(ev))
    assert back == ev
    assert (back.activity_id, back.activity_name, back.class_uid) == (5, "Rename", 1001)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"not json", "invalid event"),
        (b'{"uid":"x"}', "missing required field"),
        (b'{"uid":"x","time":1,"activity_id":5,"activity_name":"Create","user_name":"a",'
         b'"device":"d","file_path":"/p","file_new_path":"/q"}', "does not match"),
        (b'{"uid":"x","time":1,"activity_id":5,"activity_name":"Rename","user_name":"a",'
         b'"device":"d","file_path":"/p"}', "needs file_new_path"),
        (b'{"uid":"x","time":1,"activity_id":3,"activity_name":"Update","user_name":"a",'
         b'"device":"d","file_path":"/p","entropy":9.5}', "entropy"),
        (b'{"uid":"x","time":1,"activity_id":3,"activity_name":"Update","user_name":"",'
         b'"device":"d","file_path":"/p"}', "user_name"),
        (b'{"uid":"x","time":1,"activity_id":3,"activity_name":"Update","user_name":"a",'
         b'"device":"d","file_path":"/p","surprise":1}', "surprise"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(raw, needle):
    with pytest.raises(DecodeError) as info:
        decode_event(raw)
    assert needle in str(info.value)


def test_checked_in_json_schemas_match_the_structs():
    assert drifted() == [], "run: python -m dwcore.schemas.generate"
    for name, struct in CONTRACTS.items():
        assert (SCHEMA_DIR / f"{name}.schema.json").read_text() == render(struct)


def test_json_schema_drift_is_detected(tmp_path):
    for name, struct in CONTRACTS.items():
        (tmp_path / f"{name}.schema.json").write_text(render(struct))
    assert drifted(tmp_path) == []
    (tmp_path / "event.schema.json").write_text("{}")
    assert drifted(tmp_path) == ["event.schema.json"]


def test_omitted_defaults_keep_messages_small():
    ev = make_event(Activity.CREATE, uid="1", time=1, user_name="a", device="d", file_path="/p")
    raw = encode(ev)
    assert b"entropy" not in raw and len(raw) < 120
    assert msgspec.json.decode(raw)["activity_name"] == "Create"
