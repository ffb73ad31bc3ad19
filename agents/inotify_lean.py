"""A lean Linux inotify reader: ctypes on libc, big reads, names kept as bytes.

watchdog builds objects, takes locks and walks its own queues for every event; at a ransomware
burst that is the bottleneck. This reader asks only for the event kinds it is given, reads up to
1 MiB of events per ``read()`` and returns plain tuples ``(wd, mask, cookie, name)``. It is the
kernel interface only: what the events mean is the caller's business.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct

IN_ACCESS = 0x001
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_CLOSE_NOWRITE = 0x010
IN_OPEN = 0x020
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")
READ_BYTES = 1 << 20

_libc = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


class Inotify:
    """One inotify instance. Not thread-safe: one reader thread owns it."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd

    def add_watch(self, path: bytes, mask: int) -> int:
        wd = _lib().inotify_add_watch(self.fd, path, mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", os.fsdecode(path))
        return wd

    def rm_watch(self, wd: int) -> None:
        _lib().inotify_rm_watch(self.fd, wd)

    def wait(self, timeout_s: float) -> bool:
        """True when events are ready to read."""
        try:
            ready, _, _ = select.select([self.fd], [], [], timeout_s)
        except (OSError, ValueError):
            return False
        return bool(ready)

    def read(self) -> list[tuple[int, int, int, bytes]]:
        """Every event queued now (empty when none), as (wd, mask, cookie, name)."""
        try:
            buf = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return []
            raise
        out = []
        append = out.append
        unpack = _HEADER.unpack_from
        off, end = 0, len(buf)
        while off < end:
            wd, mask, cookie, length = unpack(buf, off)
            off += 16
            name = buf[off : off + length].rstrip(b"\0") if length else b""
            off += length
            append((wd, mask, cookie, name))
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
