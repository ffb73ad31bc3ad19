"""run_query picks the right path: server URL, live endpoint, direct chDB; clear error otherwise."""
from __future__ import annotations

import socket

import pytest

from dataward.config import Config, QueryConfig, StoreConfig
from dwcore.sinks import query_client
from dwcore.sinks.query_auth import ensure_token
from dwcore.sinks.query_server import QueryServer
from dwcore.sinks.store import Store, StoreError


def config_for(data_dir, url: str = "") -> Config:
    return Config(data_dir=str(data_dir), store=StoreConfig(url=url), query=QueryConfig())


def run_query(config: Config, sql: str, params=None):
    return query_client.run_query(sql, params, dsn=config.store_dsn, database=config.store.database,
                                  addr_file=config.query_addr_file)


def seed(config: Config) -> Store:
    store = Store.open(config.store_dsn)
    store.writer.ensure_schema()
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_store_yet_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no dataward store"):
        run_query(config_for(tmp_path), "SELECT 1")


def test_live_endpoint_is_used(tmp_path):
    config = config_for(tmp_path)
    store = seed(config)
    server = QueryServer(store.reader, token=ensure_token(config.query_token_file)).start()
    server.write_addr_file(config.query_addr_file)
    try:
        r = run_query(config, "SELECT {n:UInt8} + 1 AS n, currentDatabase() AS db", {"n": 41})
        assert r.rows == [[42, "dataward"]] and r.columns == ["n", "db"]
        assert server.counters["queries"] == 1
    finally:
        server.stop()
        store.close()


def test_stale_addr_file_falls_back_to_direct_chdb(tmp_path):
    config = config_for(tmp_path)
    seed(config).close()
    config.query_addr_file.write_text(f"http://127.0.0.1:{free_port()}\n")  # owner died uncleanly
    r = run_query(config, "SELECT count() FROM events")
    assert r.rows == [[0]] and r.types == ["UInt64"]


def test_server_url_wins(tmp_path):
    owner_dir = tmp_path / "owner"
    store = seed(config_for(owner_dir))
    token = ensure_token(owner_dir / "query.token")
    server = QueryServer(store.reader, token=token).start()
    host, port = server.address
    try:
        # data_dir has nothing; only the URL can answer
        url = f"http://dataward:{token}@{host}:{port}"
        r = run_query(config_for(tmp_path / "empty", url=url), "SELECT count() FROM events")
        assert r.rows == [[0]] and server.counters["queries"] >= 1  # + the client's handshake
    finally:
        server.stop()
        store.close()


def test_endpoint_without_readable_token_is_a_clear_error(tmp_path):
    config = config_for(tmp_path)
    store = seed(config)
    server = QueryServer(store.reader, token="t" * 43).start()
    server.write_addr_file(config.query_addr_file)
    try:
        with pytest.raises(StoreError, match="query token"):
            run_query(config, "SELECT 1")
    finally:
        server.stop()
        store.close()


def test_direct_chdb_path_is_vetted_too(tmp_path):
    config = config_for(tmp_path)
    seed(config).close()
    with pytest.raises(StoreError, match="ACCESS_DENIED"):
        run_query(config, "SELECT file('/etc/passwd')")
