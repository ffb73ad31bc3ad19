"""Never blind, never lose, against real Kafka: files changed while the agent was stopped are
reported after its restart; a burst with the broker killed in the middle arrives exactly once."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from dataward.config import load_config
from dataward.distributed import run_file_agent
from dwcore.schemas.codec import decode_event
from dwcore.schemas.event import Activity
from tests.conftest import ROOT
from tests.test_agents_kafka import consume

pytestmark = pytest.mark.kafka


def _agent(config, share: Path, flush_timeout_s: float = 10.0):
    stop, ready = threading.Event(), threading.Event()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        run_file_agent(config, [str(share)], stop, ready.set, tune_inotify=False, flush_timeout_s=flush_timeout_s)))
    t.start()
    assert ready.wait(30)
    return stop, t, result


def test_files_changed_while_the_agent_was_stopped_are_reported_after_restart(kafka_bootstrap, topic_prefix,
                                                                               tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "budget.xlsx").write_text("v1")
    (share / "train.csv").write_text("a,b\n")
    (share / "notes.txt").write_text("n")
    config = load_config(overrides={"data_dir": str(tmp_path / "data"), "agent": {"device": "fs01"},
                                    "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix}}, env={})
    stop, t, _ = _agent(config, share)
    stop.set()
    t.join(60)
    stopped_at = time.time()
    # while the agent is down
    (share / "train.csv").write_text("a,b\n1,2\n")
    (share / "budget.xlsx").rename(share / "budget.xlsx.locked")
    (share / "notes.txt").unlink()
    (share / "README_RESTORE.txt").write_text("pay")
    stop, t, _ = _agent(config, share)
    try:
        got = [decode_event(m.value()) for m in consume(kafka_bootstrap, f"{topic_prefix}dw.events", 5, timeout=30)]
    finally:
        stop.set()
        t.join(60)
    rec = {(e.activity_id, os.path.basename(e.file_new_path or e.file_path)) for e in got if e.reconciled}
    assert {(Activity.UPDATE, "train.csv"), (Activity.RENAME, "budget.xlsx.locked"), (Activity.DELETE, "notes.txt"),
            (Activity.CREATE, "README_RESTORE.txt")} <= rec
    alarm = [e for e in got if e.alarm == "agent_blind"]
    assert len(alarm) == 1 and alarm[0].reconciled
    blind_s = float(alarm[0].message.split(" for ")[1].split(" s ")[0])
    assert time.time() - stopped_at + 1 >= blind_s >= 0
    created = next(e for e in got if e.reconciled and e.file_path.endswith("README_RESTORE.txt"))
    assert created.magic_type == "text"  # reconciled events are enriched like live ones


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_broker(tmp_path):
    """A broker of our own, so that it can be killed and restarted without touching the shared one."""
    cache = tmp_path / "cache"
    libs = ROOT / ".cache" / "kafka" / "libs"
    if (libs / ".complete").exists():
        (cache / "kafka").mkdir(parents=True)
        (cache / "kafka" / "libs").symlink_to(libs)
    env = {**os.environ, "DATAWARD_CACHE": str(cache), "KAFKA_PORT": str(_free_port())}
    env.pop("KAFKA_BROKERS", None)
    script = str(ROOT / "scripts" / "kafka")
    out = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    bootstrap = out.stdout.strip().splitlines()[-1]

    def ctl(*args: str) -> None:
        r = subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    yield bootstrap, ctl
    subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(cache, ignore_errors=True)


N_FILES = int(os.environ.get("DW_OUTAGE_FILES", "10000"))


def test_burst_with_the_broker_killed_in_the_middle_arrives_exactly_once(private_broker, tmp_path):
    bootstrap, ctl = private_broker
    share = tmp_path / "share"
    share.mkdir()
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = load_config(overrides={"data_dir": str(tmp_path / "data"), "agent": {"device": "fs01"},
                                    "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix, "partitions": 3}},
                         env={})
    # At stop the agent waits (up to 3 min) for the restarted broker to take the spool: on a loaded
    # machine a broker restart alone can take longer than the default 10 s.
    stop, t, result = _agent(config, share, flush_timeout_s=180)
    try:
        for i in range(N_FILES):
            (share / f"f{i:06d}.txt").write_bytes(b"x")
            if i == N_FILES // 2:
                ctl("kill", "1")
                killed = time.monotonic()
            if i == N_FILES * 3 // 4:
                while time.monotonic() - killed < 3:  # a few seconds of outage, with writes going on
                    time.sleep(0.1)
                ctl("restart", "1")
    finally:
        stop.set()
        t.join(400)
    assert not t.is_alive()
    assert result["publisher_spooled_pending"] == 0, result
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([f"{prefix}dw.events"])
    uids: Counter[str] = Counter()
    names: set[str] = set()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=5000, timeout=1.0)
            for m in msgs:
                if m.error() is None:
                    ev = decode_event(m.value())
                    uids[ev.uid] += 1
                    if ev.activity_id == Activity.CREATE:
                        names.add(os.path.basename(ev.file_path))
            if sum(uids.values()) >= result["publisher_acked"] and not msgs:
                break
    finally:
        c.close()
    assert sum(uids.values()) == len(uids), [u for u, n in uids.items() if n > 1][:5]  # no duplicates
    assert len(uids) == result["publisher_published"]  # nothing lost
    assert names == {f"f{i:06d}.txt" for i in range(N_FILES)}  # every file's creation is on record
