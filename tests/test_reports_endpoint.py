"""Reports, custody verify and stock clients through the secured query endpoint (token auth, the
engine-parsed statement check): clickhouse-connect's own HTTP client, curl with the token, and
`dataward report ...` / `dataward custody verify` while another process owns the store."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import clickhouse_connect
import pytest
from typer.testing import CliRunner

from dataward.cli import app
from dwcore.schemas.alert import Alert, Severity
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.custody import Sealer
from dwcore.sinks.query_auth import ensure_token
from dwcore.sinks.query_server import QueryServer
from dwcore.sinks.replay import EmbeddedStream
from dwcore.sinks.store import Store

NOW = time.time_ns() // 1_000_000 - 600_000


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    data = tmp_path_factory.mktemp("served")
    store = Store.open(f"chdb://{data / 'chdb'}", retention_days=400)
    try:
        store.writer.ensure_schema()
        sealer = Sealer(store.writer)
        EmbeddedStream(store.writer, sealer)([
            make_event(Activity.RENAME, uid=f"r{i}", time=NOW + i * 100, user_name="alice", device="fs1",
                       file_path=f"/srv/m/{i}.pt", file_new_path=f"/srv/m/{i}.pt.locked") for i in range(4)])
        sealer.tick(force=True)
        store.writer.insert_alerts([Alert(uid="inc-9", title="t", rule="mass_rename", rule_uid="r",
                                          severity=Severity.HIGH, severity_id=4, user="alice", first_seen=NOW,
                                          detected_at=NOW + 300, signal="renames", observed=4, threshold=3,
                                          window_s=10, file_count=4, paths=[])])
        token = ensure_token(data / "query.token")
        server = QueryServer(store.reader, token=token).start()
        try:
            server.write_addr_file(data / "query.addr")
            yield data, server, token
        finally:
            server.stop()
    finally:
        store.close()  # stops any read still running, so the next module can open its own engine


def test_clickhouse_connect_with_the_token(endpoint):
    _, server, token = endpoint
    host, port = server.address
    client = clickhouse_connect.get_client(host=host, port=port, username="dataward", password=token, compress=False)
    rows = client.query("SELECT path FROM incident_events(incident = {i:String}, before_s = 0) "
                        "ARRAY JOIN [file_path] AS path ORDER BY path", parameters={"i": "inc-9"}).result_rows
    assert rows == [(f"/srv/m/{i}.pt",) for i in range(4)]
    with pytest.raises(Exception, match=r"(?i)auth|password|401|516"):
        clickhouse_connect.get_client(host=host, port=port, username="dataward", password="wrong" * 4,
                                      compress=False).query("SELECT 1")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_with_the_token(endpoint):
    _, server, token = endpoint
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-u", f"dataward:{token}",
         f"{server.url}/?default_format=JSONEachRow&param_u=alice", "--data-binary",
         "SELECT minute, sum(events) AS n FROM user_minute WHERE user_name = {u:String} GROUP BY minute"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["n"] for line in out.stdout.splitlines()] == [4]
    denied = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/?query=SELECT+1",
                             "--data-binary", ""],
                            capture_output=True, text=True, timeout=30)
    assert denied.stdout in ("401", "403")


def test_reports_and_verify_through_the_endpoint(endpoint):
    data, _, _ = endpoint
    runner = CliRunner()
    out = runner.invoke(app, ["report", "incident", "inc-9", "-f", "json", "--data-dir", str(data)])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert [f["path"] for f in doc["tables"]["files to restore for incident inc-9"]] == [
        f"/srv/m/{i}.pt" for i in range(4)]
    out = runner.invoke(app, ["report", "timeline", "--user", "alice", "--around", "inc-9", "-f", "csv",
                              "--data-dir", str(data)])
    assert out.exit_code == 0, out.output and "Rename" in out.stdout
    out = runner.invoke(app, ["custody", "verify", "-f", "json", "--data-dir", str(data)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == [{"stream": "embedded", "blocks": 1, "verified": 1, "rows": 4,
                                       "unsealed_rows": 0, "status": "ok", "first_bad_block": None,
                                       "problem": None, "detail": None}]
