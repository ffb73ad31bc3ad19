"""Running `dataward` as real processes in tests: start, wait for its "ready" line, stop by signal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


class DatawardProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None) -> None:
        self.args = args
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.log_path = log_path
        self._log = open(log_path, "w")  # closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "dataward.cli", *args],  # prefix: e.g. setpriv as nobody
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=full_env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("ready"):
                self._ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None:
                raise AssertionError(f"dataward {self.args[0]} exited {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"dataward {self.args[0]} not ready in {timeout}s:\n{self.stderr()}")

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-6000:]

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"dataward {self.args[0]} ignored SIGINT:\n{self.stderr()}") from None
        self._reader.join(5)
        self._log.close()
        return self.proc.returncode


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataward.cli", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
