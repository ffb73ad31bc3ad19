"""Follow a log file as it grows, across rotations (rename + new file, and copytruncate).

``read()`` never blocks: it returns the complete lines written since the last call. When the path
names a new file (logrotate moved the old one away), the rest of the old file is read first, then
the new one from its start, so no line between the two is lost. A file truncated in place starts
over from its beginning. A partial last line waits for its newline.
"""
from __future__ import annotations

import logging
import os

from dwcore.logfmt import kv

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HEAD = 64


class LogFollower:
    def __init__(self, path: str, *, from_start: bool = False, max_line: int = 1 << 16) -> None:
        self.path = path
        self._from_start = from_start
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._buf = b""
        self._head = b""  # the file's first bytes: a changed head means it was truncated and rewritten
        self._max_line = max_line
        self.counters = {"lines": 0, "rotations": 0, "truncations": 0, "overlong": 0}

    def _open(self, at_end: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return False
        st = os.fstat(fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        self._pos = st.st_size if at_end else 0
        self._buf = b""
        self._head = os.pread(fd, HEAD, 0)
        return True

    def _truncated(self, size: int) -> bool:
        assert self._fd is not None
        if size < self._pos:
            return True
        if len(self._head) < HEAD and size > len(self._head):
            self._head = os.pread(self._fd, HEAD, 0) if self._pos >= len(self._head) else self._head
            return False
        # copytruncate followed by new lines of about the same length: the size alone cannot tell
        return bool(self._head) and os.pread(self._fd, len(self._head), 0) != self._head

    def _drain(self) -> list[bytes]:
        assert self._fd is not None
        chunks = []
        while True:
            data = os.pread(self._fd, CHUNK, self._pos)
            if not data:
                break
            self._pos += len(data)
            chunks.append(data)
        if not chunks:
            return []
        data = self._buf + b"".join(chunks)
        lines = data.split(b"\n")
        self._buf = lines.pop()
        if len(self._buf) > self._max_line:
            # A line that never ends must not grow memory without bound.
            self.counters["overlong"] += 1
            log.warning("log_line_overlong path=%s bytes=%d action=cut", self.path, len(self._buf))
            lines.append(self._buf)
            self._buf = b""
        self.counters["lines"] += len(lines)
        return lines

    def read(self) -> list[bytes]:
        if self._fd is None:
            at_end = not self._from_start
            self._from_start = True  # after the first open, every new file is read whole
            if not self._open(at_end):
                return []
        out = self._drain()
        try:
            st = os.stat(self.path)
        except OSError:
            return out  # moved away, the new one not there yet: keep reading the old one
        if (st.st_dev, st.st_ino) != self._ino:
            out += self._drain()
            if self._buf:
                out.append(self._buf)  # the old file's last line, complete now that it is closed
            os.close(self._fd)  # type: ignore[arg-type]
            self._fd = None
            self.counters["rotations"] += 1
            log.info("log_rotated %s", kv(path=self.path))
            if self._open(False):
                out += self._drain()
        elif self._truncated(st.st_size):
            self.counters["truncations"] += 1
            log.info("log_truncated %s", kv(path=self.path))
            self._pos, self._buf, self._head = 0, b"", b""
            out += self._drain()
            self._head = os.pread(self._fd, HEAD, 0)  # type: ignore[arg-type]
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
