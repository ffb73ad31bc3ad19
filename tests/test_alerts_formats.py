"""Payloads against the fields each service documents, and hostile file names made inert."""
from __future__ import annotations

import json

import pytest

from dwcore.schemas.paths import name_text
from dwcore.sinks.alert_formats import PAGERDUTY_SEVERITY, message_id, render, sample_alert
from dwcore.sinks.alert_routing import Destination, matches
from tests.alertkit import make_alert

NOW = 1_800_000_100_000
HOSTILE = [
    "/srv/share/<!channel> pay now.txt",
    "/srv/share/```\n*bold* <https://evil.example|click>.doc",
    "/srv/share/[click](https://evil.example) {{DATE(2017-02-14T06:08:39Z)}}.xls",
    "/srv/share/\x1b[31mred\x1b[0m\u202eexe.txt",
    name_text(b"/srv/share/caf\xe9-&amp;-\xff.csv")[0],
]


def _json(kind, alerts, key=""):
    return json.loads(render(kind, alerts, NOW, routing_key=key).body)


def test_slack_incoming_webhook_text_and_blocks():
    alert = make_alert(3, severity="critical")
    doc = _json("slack", [alert])
    assert set(doc) == {"text", "blocks"} and "CRITICAL" in doc["text"] and alert.title in doc["text"]
    types = [b["type"] for b in doc["blocks"]]
    assert types[0] == "header" and "context" in types and len(types) <= 50
    header = doc["blocks"][0]["text"]
    assert header["type"] == "plain_text" and len(header["text"]) <= 150
    fields = doc["blocks"][1]["fields"]
    assert len(fields) <= 10 and all(f["type"] == "mrkdwn" and len(f["text"]) <= 2000 for f in fields)
    joined = json.dumps(doc)
    for needle in ("alice", "mass_rename", "103", "/srv/share/f0.csv.locked", "dataward query", alert.uid):
        assert needle in joined
    assert all(len(b["text"]["text"]) <= 3000 for b in doc["blocks"] if b["type"] == "section" and "text" in b)


def test_teams_workflow_message_with_adaptive_card():
    doc = _json("teams", [make_alert(1)])
    assert doc["type"] == "message" and len(doc["attachments"]) == 1
    att = doc["attachments"][0]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = att["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert {b["type"] for b in card["body"]} <= {"TextBlock", "FactSet"}
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert facts["User"] == "alice" and facts["Severity"] == "high"


@pytest.mark.parametrize("severity", ["low", "medium", "high", "critical"])
def test_pagerduty_events_v2_trigger(severity):
    alert = make_alert(2, severity=severity)
    doc = _json("pagerduty", [alert], key="R0UTINGKEY0123456789012345678901")
    assert doc["routing_key"] == "R0UTINGKEY0123456789012345678901"
    assert doc["event_action"] == "trigger" and doc["dedup_key"] == alert.uid
    p = doc["payload"]
    assert p["severity"] == PAGERDUTY_SEVERITY[severity] in {"critical", "error", "warning", "info"}
    assert 0 < len(p["summary"]) <= 1024 and p["source"] == "fs1"
    assert p["timestamp"].endswith("Z") and p["custom_details"]["incident_uid"] == alert.uid


def test_pagerduty_resolve_when_the_incident_is_resolved():
    alert = make_alert(2, version=3, status="resolved")
    doc = _json("pagerduty", [alert], key="k")
    assert doc == {"routing_key": "k", "event_action": "resolve", "dedup_key": alert.uid}


def test_webhook_body_is_the_stored_alert_and_ids_are_per_version():
    alert = make_alert(5, version=4)
    rendered = render("webhook", [alert], NOW)
    assert rendered.msg_id == message_id(alert) == f"{alert.uid}_v4"
    doc = json.loads(rendered.body)
    assert doc["type"] == "dataward.alert" and doc["timestamp"].endswith("Z")
    assert doc["data"]["uid"] == alert.uid and doc["data"]["version"] == 4 and doc["data"]["class_uid"] == 2004
    test = json.loads(render("webhook", [sample_alert(NOW)], NOW).body)
    assert test["type"] == "dataward.alert.test" and test["test"] is True
    assert test["data"]["title"].startswith("[TEST]")


@pytest.mark.parametrize("kind", ["slack", "teams", "pagerduty", "webhook"])
def test_digest_carries_every_alert(kind):
    alerts = [make_alert(i) for i in range(60)]
    rendered = render(kind, alerts, NOW, routing_key="k")
    assert rendered.msg_id.startswith("digest_")
    assert render(kind, list(reversed(alerts)), NOW, routing_key="k").msg_id == rendered.msg_id
    text = rendered.body.decode()
    listed = sum(a.uid in text for a in alerts)
    assert listed == 60 or (kind in ("slack", "teams") and listed == 40 and "and 20 more" in text)


def test_hostile_file_names_are_inert_in_slack_and_teams():
    alert = make_alert(1, paths=HOSTILE, )
    slack = render("slack", [alert], NOW).body.decode()
    doc = json.loads(slack)
    texts = json.dumps([doc["text"], doc["blocks"]], ensure_ascii=False)
    assert "<!channel>" not in texts and "<https://evil" not in texts and "\x1b" not in texts
    assert "\u202e" not in texts and "&lt;!channel&gt;" in texts
    paths_block = next(b["text"]["text"] for b in doc["blocks"] if "Sample paths" in b.get("text", {}).get("text", ""))
    assert paths_block.count("```") == 2  # a name cannot close the code block early
    teams = json.loads(render("teams", [alert], NOW).body)
    card = json.dumps(teams, ensure_ascii=False)
    assert "[click](https" not in card and "{{DATE" not in card and "\x1b" not in card
    pd = json.loads(render("pagerduty", [alert], NOW, routing_key="k").body)
    assert "\x1b" not in json.dumps(pd["payload"]["custom_details"]["sample_paths"], ensure_ascii=False)


def test_filters():
    base = Destination(name="d", kind="webhook", url="http://127.0.0.1/")
    a = make_alert(1, severity="high", user="alice", rule="mass_rename", tags=["attack.t1486"])
    assert matches(base, a)
    assert not matches(Destination(name="d", kind="webhook", url="x", min_severity="critical"), a)
    assert matches(Destination(name="d", kind="webhook", url="x", min_severity="medium"), a)
    assert not matches(Destination(name="d", kind="webhook", url="x", rules=("bulk_delete",)), a)
    assert not matches(Destination(name="d", kind="webhook", url="x", users=("bob",)), a)
    assert matches(Destination(name="d", kind="webhook", url="x", tags=("attack.t1485", "attack.t1486")), a)
    groups = {"alice": frozenset({"finance"})}.get
    assert matches(Destination(name="d", kind="webhook", url="x", user_groups=("finance",)), a,
                   lambda u: groups(u, frozenset()))
    assert not matches(Destination(name="d", kind="webhook", url="x", user_groups=("hr",)), a,
                       lambda u: groups(u, frozenset()))


def test_user_groups_from_the_system_database():
    import grp
    import os
    import pwd

    from dwcore.sinks.alert_routing import system_groups

    me = pwd.getpwuid(os.getuid()).pw_name
    primary = grp.getgrgid(os.getgid()).gr_name
    assert primary in system_groups(me)
    dest = Destination(name="d", kind="webhook", url="x", user_groups=(primary,))
    assert matches(dest, make_alert(1, user=me))
    assert not matches(dest, make_alert(1, user="no-such-user-here"))
