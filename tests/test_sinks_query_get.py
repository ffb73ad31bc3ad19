"""A query over GET is refused outright (405): a link, an <img> or a prefetch in a local browser
sends GET, so no query may run over it, whatever it carries. GET keeps only the health checks
(``/ping`` and a bare ``/``); curl and clickhouse-connect with POST work as before. Raw HTTP on a
real socket, real chDB, real curl and clickhouse-connect."""
from __future__ import annotations

import base64
import shutil
import socket
import subprocess

import clickhouse_connect
import pytest

from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.query_auth import ensure_token
from dwcore.sinks.query_server import QueryServer
from dwcore.sinks.store import Store

ALICE = "SELECT count() FROM events WHERE user_name = 'alice'"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("query-get")
    store = Store.open(f"chdb://{tmp / 'chdb'}", retention_days=3650)
    try:
        store.writer.ensure_schema()
        store.writer.insert_events([make_event(Activity.DELETE, uid=f"e{i}", time=1700000000000 + i, user_name="alice",
                                               device="fs1", file_path=f"/p/{i}") for i in range(3)])
        token = ensure_token(tmp / "query.token")
        server = QueryServer(store.reader, token=token).start()
        try:
            yield server, token, tmp
        finally:
            server.stop()
    finally:
        store.close()  # stops any read still running, so the next module can open its own engine


def raw(server: QueryServer, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request exactly as written (no client library deciding anything), Connection: close."""
    host, port = server.address
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"dataward:{token}".encode()).decode()


@pytest.mark.parametrize("target, body", [
    ("/?query=SELECT+count()+FROM+events", b""),
    ("/?query=SELECT+file('/etc/hostname')", b""),
    ("/?query=SELECT+'x'+INTO+OUTFILE+'{out}'", b""),
    ("/", b"SELECT count() FROM events"),  # a GET with the SQL in its body
    ("/?default_format=JSON&query=" + "SELECT+1", b""),
])
def test_a_query_over_get_is_refused_with_405_even_with_the_token(served, target, body):
    server, token, tmp = served
    out = tmp / "written-by-get"
    before = server.counters["queries"]
    length = f"Content-Length: {len(body)}\n" if body else ""
    status, headers, text = raw(server, f"GET {target.format(out=out)} HTTP/1.1\nHost: 127.0.0.1\n"
                                        f"Authorization: {basic(token)}\n{length}Connection: close\n", body)
    assert status == 405
    assert headers["allow"] == "POST"
    assert b"POST only" in text and b"ACCESS_DENIED" in text
    assert server.counters["queries"] == before  # never reached the engine
    assert not out.exists()


def test_head_with_a_query_is_refused_and_the_health_checks_still_answer(served):
    server, token, _ = served
    status, headers, text = raw(server, f"HEAD /?query=SELECT+1 HTTP/1.1\nHost: 127.0.0.1\n"
                                        f"Authorization: {basic(token)}\nConnection: close\n")
    assert status == 405 and headers["allow"] == "POST" and text == b""
    for target in ("/ping", "/", "/?query="):
        status, _, text = raw(server, f"GET {target} HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n")
        assert (status, text) == (200, b"Ok.\n"), target
    status, _, text = raw(server, "HEAD /ping HTTP/1.1\nHost: localhost\nConnection: close\n")
    assert (status, text) == (200, b"")


def test_post_still_answers_raw_and_without_the_token_is_401(served):
    server, token, _ = served
    body = ALICE.encode()
    status, _, text = raw(server, f"POST / HTTP/1.1\nHost: 127.0.0.1\nAuthorization: {basic(token)}\n"
                                  f"Content-Length: {len(body)}\nConnection: close\n", body)
    assert (status, text) == (200, b"3\n")
    status, _, _ = raw(server, f"POST / HTTP/1.1\nHost: 127.0.0.1\nContent-Length: {len(body)}\n"
                               "Connection: close\n", body)
    assert status == 401


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_get_is_refused_and_curl_post_works(served):
    server, token, _ = served

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "-u", f"dataward:{token}", "-w", "\n%{http_code}", *args],
                              capture_output=True, text=True, timeout=30)

    got = curl("-G", f"{server.url}/", "--data-urlencode", f"query={ALICE}")
    assert got.stdout.rsplit("\n", 1)[1] == "405" and "POST only" in got.stdout
    posted = curl(f"{server.url}/", "--data-binary", ALICE)
    assert posted.stdout == "3\n\n200"
    in_url = curl(f"{server.url}/?query=SELECT+count()+FROM+events", "--data-binary", "")
    assert in_url.stdout == "3\n\n200"


def test_clickhouse_connect_pings_and_queries(served):
    server, token, _ = served
    host, port = server.address
    client = clickhouse_connect.get_client(host=host, port=port, username="dataward", password=token, compress=False)
    try:
        assert client.ping()
        assert client.command(ALICE) == 3
        assert client.query("SELECT file_path FROM events ORDER BY file_path").result_rows == [
            ("/p/0",), ("/p/1",), ("/p/2",)]
    finally:
        client.close()
