"""Who did it, end to end: the file agent joins auditd and full_audit lines with its own events and
publishes them to a real Kafka broker; an event without an audit record keeps the owner guess."""
from __future__ import annotations

import os
import pwd
import threading
import time
from pathlib import Path

import pytest

from dataward.config import load_config
from dataward.distributed import run_file_agent
from dwcore.schemas.codec import decode_event
from dwcore.schemas.event import Activity, Attribution
from tests.test_agents_kafka import consume

pytestmark = pytest.mark.kafka


def _stamp(serial: int) -> str:
    ms = int(time.time() * 1000)
    return f"{ms // 1000}.{ms % 1000:03d}:{serial}"


def _auditd_create(path: Path, serial: int) -> str:
    s = _stamp(serial)
    return "\n".join([
        f"type=SYSCALL msg=audit({s}): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=7ffc1b2a3e40 "
        f"a2=241 a3=1b6 items=2 ppid=2300 pid=4300 auid=1002 uid=1002 gid=1002 euid=1002 suid=1002 fsuid=1002 "
        f"egid=1002 sgid=1002 fsgid=1002 tty=pts2 ses=9 comm=\"python3\" exe=\"/usr/bin/python3.12\" "
        f"subj=unconfined key=\"dataward\"\x1dAUID=\"alice\" UID=\"alice\"",
        f"type=CWD msg=audit({s}): cwd=\"{path.parent}\"",
        f"type=PATH msg=audit({s}): item=0 name=\"{path.parent}/\" inode=1 dev=08:01 mode=040775 ouid=1002 "
        f"ogid=1002 rdev=00:00 nametype=PARENT cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0",
        f"type=PATH msg=audit({s}): item=1 name={path.name.encode().hex().upper()} inode=2 dev=08:01 "
        f"mode=0100644 ouid=1002 ogid=1002 rdev=00:00 nametype=CREATE cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0",
        f"type=EOE msg=audit({s}): ",
    ]) + "\n"


def test_auditd_and_full_audit_attribution_reach_kafka(kafka_bootstrap, topic_prefix, tmp_path):
    share = tmp_path / "projects"
    share.mkdir()
    audit_log, samba_log = tmp_path / "audit.log", tmp_path / "syslog"
    audit_log.write_text("")
    samba_log.write_text("")
    config = load_config(overrides={
        "data_dir": str(tmp_path / "data"),
        "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix},
        "agent": {"device": "fs01"},
        "audit": {"auditd_log": str(audit_log), "samba_log": str(samba_log), "wait_ms": 2000,
                  "samba_shares": {"projects": str(share)}},
    }, env={})
    stop, ready = threading.Event(), threading.Event()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        run_file_agent(config, [str(share)], stop, ready.set, tune_inotify=False)))
    t.start()
    try:
        assert ready.wait(30)
        with open(audit_log, "a") as log:
            for i in range(3):
                p = share / f"train part {i}.csv"
                p.write_text("id,value\n1,2\n")
                log.write(_auditd_create(p, 700 + i))
                log.flush()
        (share / "model.bin").write_bytes(b"\x00" * 10)
        time.sleep(0.3)  # the create above is a separate operation from the rename below
        (share / "model.bin").rename(share / "model.bin.locked")
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "+00:00"
        with open(samba_log, "a") as log:
            log.write(f"{iso} fs01 smbd_audit[2211]: bob|10.0.0.6|ws2|projects|renameat|ok|"
                      f"model.bin|model.bin.locked\n")
        (share / "unaudited.txt").write_text("x")
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive()
    got = [decode_event(m.value()) for m in consume(kafka_bootstrap, f"{topic_prefix}dw.events", 6)]
    creates = {Path(e.file_path).name: e for e in got if e.activity_id == Activity.CREATE}
    for i in range(3):
        ev = creates[f"train part {i}.csv"]
        assert (ev.attribution, ev.user_name, ev.user_uid, ev.auid, ev.auid_name) == (
            Attribution.AUDITD, "alice", "1002", "1002", "alice")
        assert (ev.process_pid, ev.process_exe) == (4300, "/usr/bin/python3.12")
        assert ev.magic_type == "text"  # content signals ride along
    ren = [e for e in got if e.activity_id == Activity.RENAME]
    assert len(ren) == 1
    assert (ren[0].attribution, ren[0].user_name, ren[0].client_ip) == (Attribution.SAMBA, "bob", "10.0.0.6")
    other = creates["unaudited.txt"]
    assert other.attribution == Attribution.OWNER and other.user_name == pwd.getpwuid(os.getuid()).pw_name
    assert result["publisher_spooled_pending"] == 0
