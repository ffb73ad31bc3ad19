"""The query endpoint under attack: every request the probe made against it, made again.

Each test is an attack that succeeded against the unauthenticated, readonly-only endpoint and must
now be refused, or a limit that did not exist. Real chDB, real sockets, real clients.
"""
from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

import clickhouse_connect
import pytest

from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.query_auth import ensure_token
from dwcore.sinks.query_server import QueryLimits, QueryServer
from dwcore.sinks.store import Store

T0 = 1700000000123
ALICE = "SELECT count() FROM events WHERE user_name = 'alice'"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "shadow"
    path.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\n")
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One store for the module (alice's 3 events; other users' rows never change her count)."""
    tmp = tmp_path_factory.mktemp("query-security")
    store = Store.open(f"chdb://{tmp / 'chdb'}", retention_days=3650)
    try:
        store.writer.ensure_schema()
        store.writer.insert_events([
            make_event(Activity.DELETE, uid=f"e{i}", time=T0 + i, user_name="alice", device="fs1",
                       file_path=f"/p/{i}") for i in range(3)
        ])
        yield store, ensure_token(tmp / "query.token")
    finally:
        store.close()  # stops any read still running, so the next module can open its own engine


@pytest.fixture
def served(shared):
    store, token = shared
    servers = []

    def start(**limits) -> QueryServer:
        server = QueryServer(store.reader, token=token, limits=QueryLimits(**limits)).start()
        servers.append(server)
        return server

    yield start, store, token
    with contextlib.ExitStack() as stops:  # every server is stopped even if one stop() fails
        for server in servers:
            stops.callback(server.stop)


def call(server: QueryServer, sql: str, token: str | None, method: str = "POST", headers=None, **params):
    hdrs = {"X-ClickHouse-User": "dataward", "X-ClickHouse-Key": token} if token else {}
    hdrs.update(headers or {})
    if method == "GET":
        params["query"] = sql
        req = urllib.request.Request(f"{server.url}/?{urlencode(params)}", headers=hdrs)
    else:
        req = urllib.request.Request(f"{server.url}/?{urlencode(params)}", data=sql.encode(), headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- credentials ----------------------------------------------------------------------------

def test_no_or_wrong_credentials_are_refused(served):
    start, _, token = served
    server = start()
    for creds in (None, "wrong-token-" + "x" * 40, token[:-1]):
        status, body = call(server, ALICE, creds)
        assert status == 401 and b"AUTHENTICATION_FAILED" in body
    status, body = call(server, ALICE, None, method="GET")
    assert status == 405  # refused before the credentials are even looked at


def test_token_accepted_as_basic_auth_headers_and_url_params(served):
    start, _, token = served
    server = start()
    basic = base64.b64encode(f"dataward:{token}".encode()).decode()
    as_basic = {"Authorization": f"Basic {basic}"}
    assert call(server, ALICE, None, headers=as_basic) == (200, b"3\n")
    assert call(server, ALICE, token) == (200, b"3\n")
    assert call(server, ALICE, None, user="dataward", password=token) == (200, b"3\n")
    wrong_user = base64.b64encode(f"mallory:{token}".encode()).decode()
    assert call(server, "SELECT 1", None, headers={"Authorization": f"Basic {wrong_user}"})[0] == 401


def test_token_and_addr_files_are_owner_only_whatever_the_umask(tmp_path, shared):
    store, _ = shared
    old = os.umask(0)
    try:
        token = ensure_token(tmp_path / "query.token")
        server = QueryServer(store.reader, token=token).start()
        try:
            addr = server.write_addr_file(tmp_path / "query.addr")
            assert (tmp_path / "query.token").stat().st_mode & 0o777 == 0o600
            assert addr.stat().st_mode & 0o777 == 0o600
        finally:
            server.stop()
    finally:
        os.umask(old)
    assert len(token) >= 40 and ensure_token(tmp_path / "query.token") == token  # stable across restarts
    (tmp_path / "query.token").chmod(0o644)  # someone loosened it: it is no longer a secret
    assert ensure_token(tmp_path / "query.token") != token
    assert (tmp_path / "query.token").stat().st_mode & 0o777 == 0o600


# -- statements -----------------------------------------------------------------------------

FILE_READS = [
    "SELECT file('{p}')",
    "SELECT FILE('{p}')",
    "SELECT `file`('{p}')",
    "SELECT arrayMap(x -> file(x), ['{p}'])",
    "SELECT * FROM (SELECT file('{p}') AS f)",
    "SELECT 1 /* ; */ , file('{p}')",
    "SELECT * FROM file('{p}', 'LineAsString')",
    "SELECT * APPLY(file) FROM (SELECT '{p}' AS file_path)",
    "SELECT 1 WHERE 'x' IN file('{p}', 'LineAsString')",
    "SELECT 1; SELECT file('{p}')",
    "SELECT 1 -- comment\n; SELECT file('{p}')",
    "WITH (SELECT file('{p}')) AS s SELECT s",
    "SELECT * FROM url('http://127.0.0.1:9/x', 'LineAsString')",
    "SELECT * FROM s3('http://127.0.0.1:9/b/k', 'LineAsString')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM executable('cat {p}', 'LineAsString', 'x String')",
    "SELECT * FROM merge('system', '.*')",
    "SELECT * FROM dictionary('d')",
    "SELECT dictGet('d', 'x', 1)",
    "SELECT dictGetOrDefault('d', 'x', 1, '')",
    "SELECT joinGet('system.one', 'dummy', 0)",
    "SELECT * FROM system.tables",
    "SELECT * FROM system.processes",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM `system`.`users`",
    "SELECT 1 WHERE 'default' IN system.users",
    "SELECT getServerSetting('path')",
    "SELECT aiGenerate('x')",
    "SELECT * FROM format(CSV, 'x String', '{p}')",
    "SELECT * FROM nosuchview(a = 1)",
    "SELECT * FROM system.incident_events(incident = 'x')",
]


@pytest.mark.parametrize("template", FILE_READS)
def test_file_network_dictionary_and_foreign_table_access_is_refused(served, secret, template):
    start, _, token = served
    server = start()
    status, body = call(server, template.format(p=secret), token)
    assert status in (400, 403), body  # 403 from the parser check, 400 where the parser refuses first
    assert b"SECRETHASH" not in body
    assert b"ACCESS_DENIED" in body or b"SYNTAX_ERROR" in body


@pytest.mark.parametrize("tail", ["", " APPEND", " TRUNCATE", " AND STDOUT", " COMPRESSION 'gzip'"])
def test_into_outfile_never_writes(served, tmp_path, tail):
    start, _, token = served
    server = start()
    target = tmp_path / "root-owned.conf"
    target.write_text("keep me\n")
    for sql in (f"SELECT 'pwned' INTO OUTFILE '{target}'{tail}",
                f"SELECT 'pwned' INTO OUTFILE '{tmp_path / 'new.txt'}'{tail} FORMAT TSV"):
        status, body = call(server, sql, token)
        assert status == 403 and b"INTO OUTFILE" in body
    assert target.read_text() == "keep me\n"
    assert not (tmp_path / "new.txt").exists()


@pytest.mark.parametrize("sql", [
    "KILL QUERY WHERE 1", "KILL QUERY WHERE 1 SYNC", "SET readonly = 0", "SYSTEM FLUSH LOGS",
    "SYSTEM SHUTDOWN", "SHOW TABLES", "DESCRIBE TABLE events", "EXPLAIN SELECT 1", "USE system",
    "OPTIMIZE TABLE events FINAL", "TRUNCATE TABLE events", "ALTER TABLE events DELETE WHERE 1",
    "INSERT INTO events SELECT * FROM events", "CREATE TABLE x (a Int8) ENGINE = Memory",
    "SELECT 1 SETTINGS max_execution_time = 0", "SELECT 1 FORMAT Template",
    "SELECT 1; KILL QUERY WHERE 1",
])
def test_anything_but_a_plain_select_is_refused(served, sql):
    start, store, token = served
    server = start()
    status, _ = call(server, sql, token)
    assert status in (400, 403, 500), sql
    assert call(server, sql, token, method="GET")[0] == 405
    assert store.reader.query(ALICE).rows == [[3]]


def test_kill_from_endpoint_cannot_cancel_the_writers_insert(served):
    """The probe's KILL QUERY WHERE 1 cancelled the embedded writer's inserts; now it never runs."""
    start, store, token = served
    server = start()
    stop = threading.Event()
    kills = []

    def attacker() -> None:
        while not stop.is_set():
            kills.append(call(server, "KILL QUERY WHERE 1", token)[0])

    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        for batch in range(10):
            store.writer.insert_events([
                make_event(Activity.CREATE, uid=f"k{batch}-{i}", time=T0 + i, user_name="bob", device="fs1",
                           file_path=f"/k/{i}") for i in range(200)
            ])
    finally:
        stop.set()
        thread.join()
    assert kills and set(kills) == {403}
    assert store.reader.query("SELECT count() FROM events WHERE user_name = 'bob'").rows == [[2000]]


def test_param_identifier_cannot_name_a_foreign_table(served):
    start, _, token = served
    server = start()
    status, body = call(server, "SELECT * FROM {t:Identifier}", token, param_t="system.users")
    assert status == 403 and b"outside" in body


def test_plain_selects_over_dataward_tables_work(served):
    start, _, token = served
    server = start()
    ok = [
        ("WITH u AS (SELECT user_name FROM events WHERE user_name = 'alice') SELECT count() FROM u", b"3\n"),
        ("SELECT e.uid FROM events AS e INNER JOIN dataward.events AS f ON e.uid = f.uid ORDER BY e.uid LIMIT 1",
         b"e0\n"),
        ("SELECT uid, row_number() OVER (PARTITION BY user_name ORDER BY time) AS n FROM events ORDER BY uid "
         "LIMIT 1 FORMAT CSV", b'"e0",1\n'),
        ("SELECT count() FROM system.numbers LIMIT 1 SETTINGS", None),  # syntax error, not a bypass
        ("SELECT sum(number) FROM numbers(10)", b"45\n"),
        ("SELECT count() FROM events WHERE uid IN (SELECT uid FROM events WHERE user_name = 'alice')", b"3\n"),
        ("SELECT 'file(/etc/passwd) INTO OUTFILE' AS s", b"file(/etc/passwd) INTO OUTFILE\n"),
        ("SELECT count() FROM events WHERE file_path = {p:String}", b"1\n"),
        # dataward's own parameterized view is called like a table function
        ("SELECT count() FROM incident_events(incident = 'none', before_s = 300)", b"0\n"),
    ]
    for sql, expected in ok:
        status, body = call(server, sql, token, param_p="/p/1")
        if expected is None:
            assert status == 400
        else:
            assert (status, body) == (200, expected), sql


def test_clickhouse_connect_needs_the_token(served):
    start, _, token = served
    server = start()
    host, port = server.address
    with pytest.raises(Exception, match=r"516|401|uthentic"):
        clickhouse_connect.get_client(host=host, port=port, compress=False)
    client = clickhouse_connect.get_client(host=host, port=port, username="dataward", password=token, compress=False)
    try:
        assert client.command(ALICE) == 3
        with pytest.raises(Exception, match="497"):
            client.query("SELECT file('/etc/hostname')")
    finally:
        client.close()


# -- browser-borne requests -----------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"Host": "attacker.example"}, {"Host": "attacker.example:8123"}, {"Host": "127.0.0.1.nip.io"},
    {"Origin": "http://attacker.example"}, {"Origin": "null"},
])
def test_dns_rebinding_and_cross_origin_requests_are_refused(served, headers):
    start, _, token = served
    server = start()
    for method in ("GET", "POST"):
        status, body = call(server, ALICE, token, method=method, headers=headers)
        assert status == 403 and b"loopback" in body
    assert call(server, ALICE, token, headers={"Host": "localhost"}) == (200, b"3\n")


# -- limits ---------------------------------------------------------------------------------

def test_execution_time_is_bounded_and_a_client_cannot_raise_it(served):
    start, _, token = served
    server = start(timeout_s=1.0)
    t0 = time.monotonic()
    status, body = call(server, "SELECT count() FROM numbers(1000000000000)", token, max_execution_time="3600")
    assert status in (500, 503) and b"TIMEOUT_EXCEEDED" in body
    assert time.monotonic() - t0 < 10


def test_result_rows_bytes_and_memory_are_bounded(served):
    start, _, token = served
    server = start(max_result_rows=1000, max_result_bytes=1 << 20, max_memory_bytes=64 << 20)
    status, body = call(server, "SELECT number FROM numbers(100000)", token, max_result_rows="0")
    assert status == 500 and b"TOO_MANY_ROWS_OR_BYTES" in body, body
    status, body = call(server, "SELECT repeat('x', 10000) FROM numbers(500)", token)
    assert status == 500 and b"TOO_MANY_ROWS_OR_BYTES" in body, body
    status, body = call(server, "SELECT groupArray(repeat('x', 1000)) FROM numbers(1000000)", token)
    assert status in (500, 503) and b"MEMORY_LIMIT_EXCEEDED" in body
    assert call(server, "SELECT number FROM numbers(10) FORMAT CSV", token)[0] == 200


def _raw_request(server: QueryServer, sql: str, token: str) -> socket.socket:
    host, port = server.address
    sock = socket.create_connection((host, port))
    body = sql.encode()
    sock.sendall(
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ClickHouse-User: dataward\r\n"
        + f"X-ClickHouse-Key: {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    return sock


ENDLESS = "SELECT count() FROM numbers(100000000000000)"


def _running(store: Store) -> int:
    # The statement itself, compared whole: the endpoint's parser check runs queries whose text
    # contains it too (formatQuerySingleLine('...'), EXPLAIN AST ...), and a LIKE that counted
    # them saw the query "start" before it had.
    return store.reader.query("SELECT count() FROM system.processes WHERE query = {q:String}",
                              {"q": ENDLESS}).rows[0][0]


def test_query_of_a_client_that_went_away_is_cancelled(served):
    start, store, token = served
    server = start(timeout_s=120.0)
    sock = _raw_request(server, ENDLESS, token)
    try:
        deadline = time.monotonic() + 30
        while _running(store) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running(store) == 1
    finally:
        sock.close()  # the client goes away, whatever happened above
    deadline = time.monotonic() + 30  # well inside the query's own 120 s limit: it was killed
    while (_running(store) or server.in_flight()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.counters["cancelled"] == 1 and _running(store) == 0 and server.in_flight() == 0


def test_500_idle_connections_hold_no_threads_and_do_not_lock_out_a_client(served):
    start, _, token = served
    server = start(max_connections=64)
    before = threading.active_count()
    host, port = server.address
    idle = [socket.create_connection((host, port)) for _ in range(500)]
    try:
        idle[-1].sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # slow client, head half sent
        assert call(server, ALICE, token) == (200, b"3\n")
        assert threading.active_count() - before <= 6  # the query pool, not one thread per connection
        assert server.connections <= 65
        assert server.counters["connections_evicted"] >= 400
    finally:
        for sock in idle:
            sock.close()


def test_pipelined_requests_on_one_connection(served):
    start, _, token = served
    server = start()
    host, port = server.address
    one = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ClickHouse-Key: " + token.encode()
           + b"\r\nContent-Length: 8\r\n\r\nSELECT 7")
    with socket.create_connection((host, port)) as sock:
        sock.sendall(one + one)
        sock.settimeout(10)
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"7\n"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert data.count(b"\r\n\r\n7\n") == 2
