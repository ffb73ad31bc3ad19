"""End to end: `dataward run --config FILE` with a signed webhook destination; a 300-file rename
burst in the watched directory reaches a real receiver on 127.0.0.1 as one signed POST per alert
version, within a second, and every attempt is in the `deliveries` table."""
from __future__ import annotations

import json
import time

import pytest

from dataward.simulate import simulate_rename
from dwcore.sinks.signing import new_secret, secret_key, verify
from tests.procs import run_cli, wait_for

pytestmark = pytest.mark.e2e


def test_run_with_webhook_destination_pages_once_per_alert_version(tmp_path, dataward_proc, receiver):
    arrivals: dict[str, float] = {}

    def respond(req):
        arrivals.setdefault(req.headers.get("webhook-id", ""), time.time())
        return 200, {}, b"ok"

    rec = receiver(respond)
    secret = new_secret()
    (tmp_path / "webhook.secret").write_text(secret + "\n")
    watched, state = tmp_path / "watched", tmp_path / "state"
    watched.mkdir()
    cfg = tmp_path / "dataward.yaml"
    cfg.write_text(f"""
data_dir: {state}
alerts:
  destinations:
    - name: oncall
      kind: webhook
      url: {rec.url}
      secret_file: {tmp_path / 'webhook.secret'}
      min_severity: high
""")
    proc = dataward_proc("run", "--watch", str(watched), "--config", str(cfg))
    proc.wait_ready(60)

    t0 = time.time()
    simulate_rename(watched, 300, ".locked", show_progress=False)
    done = time.time()
    # 300 renames are far past critical: the incident's versions end at critical.
    wait_for(lambda: any(r.json()["data"]["severity"] == "critical" for r in rec.requests), 10,
             what="critical alert version at the receiver")
    key = secret_key(secret)
    ids = [verify(key, r.headers, r.body, now_s=time.time()) for r in rec.requests]
    docs = [r.json()["data"] for r in rec.requests]
    # One POST per alert version, no duplicates. (Severity joins the key until every escalation
    # carries its own version number: then the ids alone are unique.)
    assert len({(i, d["severity"]) for i, d in zip(ids, docs, strict=True)}) == len(ids)
    assert ids == [f"{d['uid']}_v{d['version']}" for d in docs]
    assert all(d["file_count"] > 0 and d["paths"] for d in docs)
    first_post = min(arrivals.values())
    print(f"e2e: burst written in {(done - t0) * 1000:.0f} ms; first rename -> first signed POST "
          f"{(first_post - t0) * 1000:.0f} ms; -> critical POST {(max(arrivals.values()) - t0) * 1000:.0f} ms")
    assert max(arrivals.values()) - done < 1.0  # within a second of the burst

    def delivered():
        res = run_cli("query", "SELECT destination, kind, alert_uid, alert_version, http_status, status, attempt, "
                               "message_id "
                               "FROM deliveries ORDER BY time", "--data-dir", str(state), "--format", "json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def received():
        return {(r.json()["data"]["uid"], r.json()["data"]["version"]) for r in rec.requests}

    # Later versions (growth, closing) may still arrive: every one received must have its row.
    rows = wait_for(lambda: (r := delivered()) and {(x["alert_uid"], x["alert_version"]) for x in r} == received()
                    and r, 15, interval=0.5, what="a deliveries row per received alert version")
    assert all(r["destination"] == "oncall" and r["http_status"] == 200 and r["status"] == "delivered"
               for r in rows)
    assert proc.stop() == 0
