"""The read-only endpoint, as curl (urllib) and clickhouse-connect's HTTP client use it."""
from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlencode

import clickhouse_connect
import pytest

from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.query_server import QueryServer
from dwcore.sinks.store import Store

T0 = 1700000000123
TOKEN = "test-token-0123456789abcdef0123456789"
AUTH = {"X-ClickHouse-User": "dataward", "X-ClickHouse-Key": TOKEN}


@pytest.fixture
def served(tmp_path):
    store = Store.open(f"chdb://{tmp_path / 'chdb'}", retention_days=3650)
    store.writer.ensure_schema()
    store.writer.insert_events([
        make_event(Activity.DELETE, uid=f"e{i}", time=T0 + i, user_name="bob" if i % 2 else "alice",
                   device="fs1", file_path=f"/p/{i}")
        for i in range(6)
    ])
    server = QueryServer(store.reader, token=TOKEN).start()
    yield server, store
    server.stop()
    store.close()


def get(url: str, **params: str) -> bytes:
    """The query in the URL, POSTed with an empty body (a query over GET is refused)."""
    req = urllib.request.Request(f"{url}/?{urlencode(params)}", data=b"", headers=AUTH)
    with urllib.request.urlopen(req) as resp:
        return resp.read()


def post(url: str, body: str, **params: str):
    req = urllib.request.Request(f"{url}/?{urlencode(params)}", data=body.encode(), headers=AUTH)
    return urllib.request.urlopen(req)


def test_ping_and_tabseparated_default(served):
    server, _ = served
    assert urllib.request.urlopen(f"{server.url}/ping").read() == b"Ok.\n"
    out = get(server.url, query="SELECT user_name, count() FROM events GROUP BY user_name ORDER BY user_name")
    assert out == b"alice\t3\nbob\t3\n"


def test_jsonEachRow_by_default_format_and_by_trailing_format(served):
    server, _ = served
    sql = "SELECT uid, toUnixTimestamp64Milli(time) AS ms FROM events ORDER BY uid LIMIT 2"
    with post(server.url, sql, default_format="JSONEachRow") as resp:
        assert resp.read() == b'{"uid":"e0","ms":1700000000123}\n{"uid":"e1","ms":1700000000124}\n'
        assert resp.headers["X-ClickHouse-Format"] == "JSONEachRow"
        assert resp.headers["X-ClickHouse-Timezone"] == "UTC"
    with post(server.url, sql + " FORMAT CSV") as resp:
        assert resp.read() == b'"e0",1700000000123\n"e1",1700000000124\n'
        assert resp.headers["X-ClickHouse-Format"] == "CSV"


def test_param_placeholders(served):
    server, _ = served
    out = get(server.url, query="SELECT count() FROM events WHERE user_name = {u:String} AND time > {t:DateTime64(3)}",
              param_u="bob", param_t="2023-11-14 22:13:20.124")
    assert out == b"2\n"  # e3, e5 (e1 is not after t)


@pytest.mark.parametrize("sql", ["INSERT INTO events (uid) VALUES ('x')", "DROP TABLE events",
                                 "SELECT 1 SETTINGS readonly=0"])
def test_writes_refused_with_403_and_clickhouse_text(served, sql):
    server, store = served
    with pytest.raises(urllib.error.HTTPError) as err:
        post(server.url, sql, readonly="0")  # a readonly URL param cannot lift it either
    # refused by the parser check (497) or, for SETTINGS, already by readonly while parsing (164)
    assert err.value.code in (403, 500)
    code = err.value.headers["X-ClickHouse-Exception-Code"]
    assert code in ("497", "164")
    assert err.value.read().startswith(f"Code: {code}. DB::Exception".encode())
    assert store.reader.query("SELECT count() FROM events").rows == [[6]]


def test_unknown_settings_ignored_allowlisted_applied(served):
    server, _ = served
    # break stops at a block boundary: with one-row blocks the limit is exact
    out = get(server.url, query="SELECT number FROM system.numbers LIMIT 10", session_id="abc",
              wait_end_of_query="1", max_result_rows="3", result_overflow_mode="break", max_block_size="1",
              allow_ddl="1", send_progress_in_http_headers="1")
    assert out == b"0\n1\n2\n"
    # the default overflow mode refuses the whole result, naming the limit that was applied
    with pytest.raises(urllib.error.HTTPError) as err:
        get(server.url, query="SELECT number FROM system.numbers LIMIT 10", max_result_rows="3")
    assert err.value.headers["X-ClickHouse-Exception-Code"] == "396"
    assert b"max rows: 3.00" in err.value.read()
    assert get(server.url, query="SELECT number FROM system.numbers LIMIT 3", max_result_rows="3") == b"0\n1\n2\n"
    with pytest.raises(urllib.error.HTTPError) as err:
        get(server.url, query="SELEC 1")
    assert err.value.code == 400


def test_clickhouse_connect_http_client(served):
    server, _ = served
    host, port = server.address
    client = clickhouse_connect.get_client(host=host, port=port, username="dataward", password=TOKEN,
                                           compress=False)
    try:
        r = client.query("SELECT uid, toUnixTimestamp64Milli(time) AS ms, user_name FROM events "
                         "WHERE user_name = {u:String} ORDER BY uid", parameters={"u": "alice"})
        assert r.column_names == ("uid", "ms", "user_name")
        assert r.result_rows == [("e0", T0, "alice"), ("e2", T0 + 2, "alice"), ("e4", T0 + 4, "alice")]
        assert client.command("SELECT count() FROM events") == 6
        with pytest.raises(Exception, match="497"):
            client.command("DROP TABLE events")
    finally:
        client.close()


def test_store_over_http_reads_through_the_endpoint(served):
    server, _ = served
    host, port = server.address
    remote = Store.open(f"http://dataward:{TOKEN}@{host}:{port}")
    try:
        r = remote.reader.query("SELECT {s:String} AS s, count() AS n FROM events WHERE user_name = {u:String}",
                         {"s": "tab\there", "u": "bob"})
        assert r.rows == [["tab\there", 3]]
    finally:
        remote.close()


def test_addr_file_written_and_removed(tmp_path):
    store = Store.open(f"chdb://{tmp_path / 'chdb'}")
    try:
        server = QueryServer(store.reader, token=TOKEN).start()
        addr = server.write_addr_file(tmp_path / "query.addr")
        assert addr.read_text().strip() == server.url
        assert addr.stat().st_mode & 0o777 == 0o600
        assert urllib.request.urlopen(addr.read_text().strip() + "/ping").read() == b"Ok.\n"
        server.stop()
        assert not addr.exists()
    finally:
        store.close()
