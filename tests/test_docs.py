"""The README is run, not just read: its commands and claims against the real product.

- every relative link in README.md and docs/*.md points at a file that exists;
- the first-ten-minutes self-test: `dataward run` + `dataward simulate rename --files 300` prints
  the alert the README shows (CRITICAL mass_rename, attributed to the owner of the files) and
  writes it to the JSONL file;
- every command of the analyst's block runs as written (only `.dataward` points at this test's
  data dir) while `dataward run` owns the store, and the curl line answers;
- the configuration example loads.
The distributed block needs three more long-running processes; tests/test_e2e_distributed.py
runs the same commands with a topic prefix.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dataward.config import load_config
from tests.procs import run_cli, wait_for

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README) if kind == lang]


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(doc: Path):
    missing = [target for target in LINK.findall(doc.read_text())
               if "://" not in target and not (doc.parent / target).exists()]
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


def test_every_table_and_column_is_documented_in_sinks_md():
    from dataward import tables_reference

    section = tables_reference.render(tables_reference.live_columns())  # raises on an undocumented column
    assert section in (ROOT / "docs" / "sinks.md").read_text(), (
        "docs/sinks.md is stale: run python -m dataward.tables_reference")
    assert "| 5 | Rename |" in section and "| `activity_id` | `UInt8` |" in section


def test_configuration_example_loads(tmp_path):
    (yaml_block,) = blocks("yaml")
    path = tmp_path / "dw.yaml"
    path.write_text(yaml_block)
    cfg = load_config(path, env={})
    assert cfg.kafka.partitions == 12 and cfg.store.batch_rows == 10000


def _alerts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_first_ten_minutes_alert_and_analyst_commands(tmp_path, dataward_proc):
    watched, state = tmp_path / "demo-data", tmp_path / "state"
    watched.mkdir()
    jsonl = state / "alerts.jsonl"
    # what `make run` runs
    run = dataward_proc("run", "--watch", str(watched), "--data-dir", str(state), "--alerts-jsonl", str(jsonl))
    run.wait_ready(60)
    # what `make attack` runs
    attack = run_cli("simulate", "rename", str(watched), "--files", "300", "--data-dir", str(state), timeout=120)
    assert attack.returncode == 0, attack.stderr
    assert "drill detected: critical" in attack.stdout and list(watched.iterdir()) == []  # nothing left
    me = pwd.getpwuid(os.getuid()).pw_name  # the owner of the files the self-test created

    def first_alert():
        return next((a for a in _alerts(jsonl) if a["rule"] == "mass_rename"), None)

    alert = wait_for(first_alert, 20, what="the mass_rename alert")
    assert (alert["severity"], alert["user"]) == ("critical", me)
    assert {a["uid"] for a in _alerts(jsonl)} == {alert["uid"]}  # one incident, in versions
    assert all(a["drill"] for a in _alerts(jsonl))  # tagged: shown and stored, never paged
    assert 100 <= alert["file_count"] <= 300 and alert["title"].startswith(f"Mass rename by {me}: ")
    assert f"CRITICAL  Mass rename by {me}: " in run.stderr()  # on screen too

    # The analyst's block, as written, against the store `dataward run` owns right now.
    (analyst,) = [b for b in blocks("sh") if "FROM deadletter" in b]
    script = analyst.replace("--data-dir .dataward", f"--data-dir {state}")
    assert script != analyst
    dataward = f'{sys.executable} -m dataward.cli'
    out = subprocess.run(["bash", "-euc", f'dataward() {{ {dataward} "$@"; }}\n{script}'],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "critical" in out.stdout and "mass_rename" in out.stdout  # the first query: what fired
    assert out.stdout.count(" rows") == 4  # every command printed its table

    (curl_line,) = re.findall(r"`(curl [^`]+)`", section("For the SOC analyst: your first ten minutes"))
    curl = subprocess.run(["bash", "-euc", curl_line.replace(".dataward/", f"{state}/")],
                          capture_output=True, text=True, timeout=60)
    assert curl.returncode == 0 and int(curl.stdout.strip()) >= 300, curl.stderr  # events so far
