"""One process owns a data directory: a lock file holding its pid.

chDB refuses a second process with a long engine traceback; the lock turns that into one line
that names the process holding the directory. ``flock`` is released by the kernel when the holder
dies, so a stale file after a crash never blocks a restart.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirInUse(RuntimeError):
    def __init__(self, data_dir: Path, pid: str) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"data dir {data_dir} is in use by {holder} (lock file {data_dir / LOCK_NAME})")
        self.pid = pid


LOCK_NAME = "dataward.lock"


class DataDirLock:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise DataDirInUse(self.data_dir, pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: removing it would race with a process that is opening it right now.
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
