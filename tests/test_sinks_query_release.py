"""A read still running when its store closes or its endpoint stops is stopped, not left behind.

chDB runs one engine per process. A query left running holds it, bound to that store's directory,
until the query's own time limit: meanwhile no other directory opens in the process ("EmbeddedServer
already initialized with path ..."), the way one stuck test once failed 41 tests of other modules.
Each test has its own store, because each closes it. Real chDB, real sockets.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from dwcore.sinks.errors import StoreError
from dwcore.sinks.query_auth import ensure_token
from dwcore.sinks.query_server import QueryLimits, QueryServer
from dwcore.sinks.store import Store
from dwcore.sinks.store_reader import StoreReader

ENDLESS = "SELECT count() FROM numbers(100000000000000)"  # hours of work: only a kill ends it soon
# The queries' own limit: far beyond what the assertions wait, yet short enough that a regression
# holds the engine (and fails the tests after it) for one minute, not ten.
LIMIT_S = 60


@pytest.fixture
def store(tmp_path):
    store = Store.open(f"chdb://{tmp_path / 'a'}", retention_days=3650)
    try:
        store.writer.ensure_schema()
        yield store
    finally:
        store.close()


def running(store: Store) -> int:
    return store.reader.query("SELECT count() FROM system.processes WHERE query = {q:String}",
                              {"q": ENDLESS}).rows[0][0]


def wait_until_running(store: Store) -> None:
    deadline = time.monotonic() + 30
    while running(store) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(store) == 1


def another_store_opens(tmp_path) -> bool:
    """The engine is free: a store in another directory opens in this process."""
    try:
        other = Store.open(f"chdb://{tmp_path / 'b'}", retention_days=3650)
    except StoreError:
        return False
    other.close()
    return True


def send(server: QueryServer, token: str, sql: str) -> socket.socket:
    sock = socket.create_connection(server.address)
    body = sql.encode()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ClickHouse-Key: " + token.encode()
                 + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_closing_the_store_stops_its_running_read_and_frees_the_engine(store, tmp_path):
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            store.reader.query(ENDLESS, settings={"max_execution_time": str(LIMIT_S)})
            outcome.append(None)
        except StoreError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    wait_until_running(store)
    t0 = time.monotonic()
    store.close()
    assert time.monotonic() - t0 < 10
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], StoreError) and outcome[0].code == 394  # QUERY_WAS_CANCELLED
    assert another_store_opens(tmp_path)


def test_stopping_the_endpoint_stops_the_query_of_a_client_still_connected(store, tmp_path):
    token = ensure_token(tmp_path / "query.token")
    server = QueryServer(store.reader, token=token, limits=QueryLimits(timeout_s=LIMIT_S)).start()
    with send(server, token, ENDLESS):
        wait_until_running(store)
        server.stop()
        assert server.in_flight() == 0 and running(store) == 0
    store.close()
    assert another_store_opens(tmp_path)


class SlowToStart(StoreReader):
    """The store's reader, but a query waits at a gate before it reaches the engine: a busy
    machine where the thread that runs it is slow to start, made deterministic."""

    def __init__(self, inner: StoreReader) -> None:
        super().__init__(inner._backend, inner.database, inner.label)
        self.waiting = threading.Event()
        self.gate = threading.Event()
        self.finished = threading.Event()

    def query_bytes(self, *args, **kwargs) -> bytes:
        self.waiting.set()
        self.gate.wait(30)
        try:
            return super().query_bytes(*args, **kwargs)
        finally:
            self.finished.set()


def test_a_query_whose_client_left_before_it_started_does_not_outlive_the_endpoint(store, tmp_path):
    """The client leaves while its query has not reached the engine (a KILL then finds nothing), and
    the endpoint is stopped before it does: when the query starts it is stopped, and stop() waits for that."""
    token = ensure_token(tmp_path / "query.token")
    reader = SlowToStart(store.reader)
    server = QueryServer(reader, token=token, limits=QueryLimits(timeout_s=LIMIT_S)).start()
    with send(server, token, ENDLESS):
        assert reader.waiting.wait(30)
    deadline = time.monotonic() + 30
    while not server.counters["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.counters["cancelled"] == 1
    stopping = threading.Thread(target=server.stop, daemon=True)
    stopping.start()
    time.sleep(0.5)  # stop() is under way (its KILLs find nothing yet) when the query starts
    reader.gate.set()
    stopping.join(timeout=30)
    assert not stopping.is_alive()
    assert reader.finished.is_set() and server.in_flight() == 0 and running(store) == 0
    store.close()
    assert another_store_opens(tmp_path)
