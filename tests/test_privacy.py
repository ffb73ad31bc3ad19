"""The data dir is private (0700 dirs, 0600 files) whatever the umask: the probe read the chDB
files, alerts JSONL, parked events and the query address as another local user."""
from __future__ import annotations

import json
import os
import stat

import pytest

from dataward.privacy import make_private
from dataward.simulate import simulate_rename
from tests.procs import run_cli, wait_for


def _loose(root) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                out.append(f"{oct(st.st_mode & 0o777)} {path}")
    return out


def test_make_private_tightens_an_old_data_dir_without_following_links(tmp_path):
    data = tmp_path / "state"
    (data / "rejected").mkdir(parents=True)
    (data / "rejected").chmod(0o755)
    (data / "rejected" / "events-1.jsonl").write_text("{}\n")
    (data / "rejected" / "events-1.jsonl").chmod(0o644)
    outside = tmp_path / "not-ours.txt"
    outside.write_text("x")
    outside.chmod(0o644)
    (data / "link").symlink_to(outside)
    old = os.umask(0o022)
    try:
        assert make_private(data) >= 2
        assert _loose(data) == []
        assert outside.stat().st_mode & 0o777 == 0o644  # the link's target is not ours to change
    finally:
        os.umask(old)


@pytest.mark.e2e
def test_embedded_run_under_umask_000_leaves_nothing_readable_by_others(tmp_path, dataward_proc):
    watched, state = tmp_path / "watched", tmp_path / "state"
    watched.mkdir()
    jsonl = state / "alerts.jsonl"
    old = os.umask(0)  # the child inherits the loosest umask there is
    try:
        proc = dataward_proc("run", "--watch", str(watched), "--data-dir", str(state), "--alerts-jsonl", str(jsonl))
        proc.wait_ready(60)
    finally:
        os.umask(old)
    simulate_rename(watched, 120, ".locked", show_progress=False)
    wait_for(lambda: jsonl.exists() and jsonl.read_text().strip(), 15, what="an alert")

    def stored() -> int:
        res = run_cli("query", "SELECT count() AS n FROM events", "--data-dir", str(state), "--format", "json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)[0]["n"]

    wait_for(stored, 15, interval=0.3, what="events stored, read through the endpoint with the token")
    assert (state / "query.token").exists() and (state / "query.addr").exists()
    assert _loose(state) == []
    assert proc.stop() == 0
    assert _loose(state) == []
