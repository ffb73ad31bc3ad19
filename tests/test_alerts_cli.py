"""`dataward alerts verify` and `alerts test` as a user runs them, and secrets from files and env."""
from __future__ import annotations

import json
import time

import pytest

from dataward.alerting import destinations
from dataward.config import ConfigError, load_config
from dwcore.sinks.signing import new_secret, secret_key, signed_headers
from tests.procs import run_cli


def _signed(tmp_path, secret, ts=None, body=b'{"type":"dataward.alert","data":{}}'):
    ts = int(time.time()) if ts is None else ts
    headers = signed_headers(secret_key(secret), "abc_v1", ts, body)
    (tmp_path / "body.json").write_bytes(body)
    (tmp_path / "headers.txt").write_text("HTTP/1.1 POST\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()))
    (tmp_path / "secret").write_text(secret + "\n")
    return headers


def _verify(tmp_path, *extra, env=None):
    return run_cli("alerts", "verify", "--body", str(tmp_path / "body.json"), *extra, env=env)


def test_verify_exit_codes(tmp_path):
    secret = new_secret()
    _signed(tmp_path, secret)
    ok = _verify(tmp_path, "--headers", str(tmp_path / "headers.txt"), "--secret-file", str(tmp_path / "secret"))
    assert ok.returncode == 0 and "abc_v1" in ok.stdout
    # From the environment instead of a file.
    assert _verify(tmp_path, "--headers", str(tmp_path / "headers.txt"),
                   env={"DATAWARD_WEBHOOK_SECRET": secret}).returncode == 0
    # A body changed by one byte.
    (tmp_path / "body.json").write_bytes(b'{"type":"dataward.alert","data":{} }')
    bad = _verify(tmp_path, "--headers", str(tmp_path / "headers.txt"), "--secret-file", str(tmp_path / "secret"))
    assert bad.returncode == 1 and "signature" in bad.stderr
    # The wrong secret.
    h = _signed(tmp_path, secret)
    (tmp_path / "other").write_text(new_secret())
    assert _verify(tmp_path, "--headers", str(tmp_path / "headers.txt"),
                   "--secret-file", str(tmp_path / "other")).returncode == 1
    # Headers given as options; a timestamp from an hour ago is authentic but stale.
    h = _signed(tmp_path, secret, ts=int(time.time()) - 3600)
    stale = _verify(tmp_path, "--id", h["webhook-id"], "--timestamp", h["webhook-timestamp"],
                    "--signature", h["webhook-signature"], "--secret-file", str(tmp_path / "secret"))
    assert stale.returncode == 3
    # Missing headers or secret: usage error.
    assert _verify(tmp_path, "--secret-file", str(tmp_path / "secret")).returncode == 2
    assert _verify(tmp_path, "--headers", str(tmp_path / "headers.txt"), env={"DATAWARD_WEBHOOK_SECRET": ""}
                   ).returncode == 2


def test_alerts_test_sends_a_marked_sample(tmp_path, receiver):
    rec = receiver()
    secret = new_secret()
    (tmp_path / "s").write_text(secret)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
alerts:
  destinations:
    - {{name: oncall, kind: webhook, url: "{rec.url}", secret_file: "{tmp_path / 's'}", min_severity: critical}}
    - {{name: chat, kind: slack}}
""")
    res = run_cli("alerts", "test", "oncall", "--config", str(cfg), env={"DATAWARD_ALERTS_CHAT_URL": rec.url})
    assert res.returncode == 0, res.stderr
    assert "delivered" in res.stdout
    req = rec.requests[-1]
    doc = req.json()
    assert doc["type"] == "dataward.alert.test" and doc["test"] is True  # min_severity bypassed for a test
    from dwcore.sinks.signing import verify
    verify(secret_key(secret), req.headers, req.body, now_s=time.time())
    res = run_cli("alerts", "test", "chat", "--config", str(cfg), env={"DATAWARD_ALERTS_CHAT_URL": rec.url})
    assert res.returncode == 0, res.stderr
    assert json.loads(rec.requests[-1].body)["text"].startswith(":white_circle: [TEST]")
    # A dead endpoint: exit 1 and the table says why; an unknown name: exit 2.
    dead = run_cli("alerts", "test", "chat", "--config", str(cfg),
                   env={"DATAWARD_ALERTS_CHAT_URL": "http://127.0.0.1:9/x"})
    assert dead.returncode == 1 and "Connection" in dead.stdout
    assert run_cli("alerts", "test", "nope", "--config", str(cfg)).returncode == 2


def test_secrets_come_from_files_and_env_and_are_never_in_errors(tmp_path):
    (tmp_path / "rk").write_text("PDROUTINGKEY\n")
    (tmp_path / "slack").write_text("https://hooks.slack.example/services/T0/B0/SECRETPATH\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
alerts:
  destinations:
    - {{name: pager, kind: pagerduty, secret_file: "{tmp_path / 'rk'}"}}
    - {{name: chat, kind: slack, secret_file: "{tmp_path / 'slack'}", rules: [mass_rename]}}
    - {{name: teams-ops, kind: teams}}
""")
    dests = {d.name: d for d in destinations(load_config(cfg, env={}),
                                            env={"DATAWARD_ALERTS_TEAMS_OPS_URL": "https://t.example/wf?sig=S"})}
    assert dests["pager"].secret == "PDROUTINGKEY" and dests["pager"].url.startswith("https://events.pagerduty")
    assert dests["pager"].rate_per_minute == 120 and dests["chat"].rate_per_minute == 60
    assert dests["chat"].url.endswith("SECRETPATH") and dests["chat"].rules == ("mass_rename",)
    assert dests["teams-ops"].url == "https://t.example/wf?sig=S"
    assert "SECRETPATH" not in repr(dests["chat"]) and "PDROUTING" not in repr(dests["pager"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts:\n  destinations:\n    - {name: hook, kind: webhook, url: 'http://127.0.0.1/'}\n")
    with pytest.raises(ConfigError, match="DATAWARD_ALERTS_HOOK_SECRET"):
        destinations(load_config(bad, env={}), env={})
    with pytest.raises(ConfigError):
        load_config(tmp_path / "c.yaml", overrides={"alerts": {"destinations": [{"name": "x", "kind": "sms"}]}},
                    env={})


def test_incident_resolve_sends_a_pagerduty_resolve(tmp_path, receiver):
    from dwcore.sinks.store import Store
    from tests.alertkit import make_alert

    rec = receiver(lambda req: (202, {}, b'{"status":"success"}'))
    state = tmp_path / "state"
    (tmp_path / "rk").write_text("ROUTINGKEY123")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
data_dir: {state}
alerts:
  destinations:
    - {{name: pager, kind: pagerduty, url: "{rec.url}", secret_file: "{tmp_path / 'rk'}"}}
""")
    alert = make_alert(4, severity="critical", version=2)
    store = Store.open(f"chdb://{state / 'chdb'}")
    try:
        store.writer.ensure_schema()
        store.writer.insert_alerts([alert])
    finally:
        store.close()
    res = run_cli("incident", "resolve", alert.uid, "--by", "oncall-bob", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert [r.json() for r in rec.requests] == [
        {"routing_key": "ROUTINGKEY123", "event_action": "resolve", "dedup_key": alert.uid}]
    rows = run_cli("query", "SELECT alert_version, destination, status, http_status FROM deliveries",
                   "--config", str(cfg), "--format", "json")
    assert rows.returncode == 0, rows.stderr
    assert json.loads(rows.stdout) == [{"alert_version": 3, "destination": "pager", "status": "delivered",
                                         "http_status": 202}]
