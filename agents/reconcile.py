"""Never blind: what changed while the agent was not looking, found by a rescan.

The agent keeps a snapshot of each watched tree in its data dir (path -> size, mtime, inode,
owner, kind), written when it stops and after every rescan. At start, and after the kernel's
inotify queue overflowed, the tree is scanned again and diffed against the snapshot: new paths
become Create events, vanished ones Delete, changed size or mtime Update, and a path that
vanished while another with the same inode appeared becomes a Rename. Every such event is marked
``reconciled=True``, and one ``agent_blind`` alarm per root says for how long the agent was blind
and how many changes the rescan found.

After an overflow the snapshot is older than the overflow itself, so creations and updates are
only reported when the file changed after the agent went blind (deletions and renames cannot be
dated and are always reported); at start everything that differs is reported.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec

from dwcore.agents.attribution import OwnerResolver
from dwcore.logfmt import kv
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event
from dwcore.schemas.paths import name_text

log = logging.getLogger(__name__)

ALARM_BLIND = "agent_blind"
SLACK_NS = 2_000_000_000  # clock and mtime granularity: a change this close to going blind counts


class Entry(msgspec.Struct, array_like=True, frozen=True):
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    uid: int
    is_dir: bool


class Snapshot(msgspec.Struct):
    root: bytes
    taken_ms: int  # when the agent last knew this tree (its stop, or the end of a rescan)
    entries: dict[bytes, Entry] = {}


def scan(root: bytes, exclude: Sequence[bytes] = ()) -> dict[bytes, Entry]:
    """Every file and directory under ``root`` (not following links), by absolute path in bytes."""
    out: dict[bytes, Entry] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                p = e.path
                if p in exclude or any(p.startswith(x + b"/") for x in exclude):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                out[p] = Entry(st.st_size if not is_dir else 0, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                               st.st_uid, is_dir)
                if is_dir:
                    stack.append(p)
    return out


def _identity(e: Entry) -> tuple[int, bool, int, int]:
    return (e.ino, True, 0, 0) if e.is_dir else (e.ino, False, e.size, e.mtime_ns)


def diff(old: dict[bytes, Entry], new: dict[bytes, Entry], changed_since_ns: int | None = None
         ) -> Iterator[tuple[Activity, bytes, bytes | None, Entry]]:
    """(activity, path, new path, entry) for each difference; renames paired by inode."""
    gone = {p: e for p, e in old.items() if p not in new}
    born = {p: e for p, e in new.items() if p not in old}
    # A rename keeps inode, size and mtime; matching all three keeps a reused inode (a file deleted,
    # another created) from passing as a rename.
    by_ino = {_identity(e): p for p, e in gone.items()}
    moved_dirs: list[tuple[bytes, bytes]] = []
    for p in sorted(born):
        e = born[p]
        src = by_ino.pop(_identity(e), None)
        if src is not None:
            del gone[src]
            # Children of a renamed directory moved with it: one Rename of the directory says it.
            if any(src.startswith(a + b"/") and p.startswith(b + b"/") for a, b in moved_dirs):
                continue
            if e.is_dir:
                moved_dirs.append((src, p))
            yield Activity.RENAME, src, p, e
        elif changed_since_ns is None or max(e.mtime_ns, e.ctime_ns) >= changed_since_ns - SLACK_NS:
            yield Activity.CREATE, p, None, e
    for p, e in new.items():
        o = old.get(p)
        if o is None or e.is_dir or o.is_dir:
            continue
        if (o.size, o.mtime_ns) != (e.size, e.mtime_ns) and (
                changed_since_ns is None or max(e.mtime_ns, e.ctime_ns) >= changed_since_ns - SLACK_NS):
            yield Activity.UPDATE, p, None, e
    gone_dirs = sorted((p for p, e in gone.items() if e.is_dir), key=len)
    for p in sorted(gone):
        # One Delete for a removed directory, not one per file inside it.
        if any(p.startswith(d + b"/") for d in gone_dirs if d != p):
            continue
        yield Activity.DELETE, p, None, gone[p]


class Reconciler:
    """Snapshots and rescans for the watched roots; ``emit`` receives the reconciled events."""

    def __init__(self, roots: Sequence[str], state_dir: str | os.PathLike[str], device: str,
                 emit: Callable[[list[AccessEvent]], None], *, agent_user: str, exclude: Sequence[str] = (),
                 clock: Callable[[], float] = time.time, batch: int = 1000) -> None:
        self.roots = [os.fsencode(os.path.abspath(r)) for r in roots]
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self._emit = emit
        self._agent_user = agent_user
        self._exclude = [os.fsencode(os.path.abspath(x)) for x in exclude]
        self._clock = clock
        self._batch = batch
        self._owners = OwnerResolver(max_paths=1)
        self.counters = {"rescans": 0, "reconciled": 0}

    def _file(self, root: bytes) -> Path:
        return self.dir / f"snapshot-{hashlib.sha256(root).hexdigest()[:16]}.msgpack"

    def load(self, root: bytes) -> Snapshot | None:
        try:
            return msgspec.msgpack.decode(self._file(root).read_bytes(), type=Snapshot)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("snapshot_unreadable root=%r error=%s action=full_rescan_without_diff", root, exc)
            return None

    def save(self, root: bytes, entries: dict[bytes, Entry], taken_ms: int | None = None) -> None:
        snap = Snapshot(root, taken_ms if taken_ms is not None else int(self._clock() * 1000), entries)
        path = self._file(root)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgspec.msgpack.encode(snap))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def snapshot_all(self) -> None:
        """At a clean stop: remember the trees as they are now."""
        for root in self.roots:
            self.save(root, scan(root, self._exclude))

    def reconcile(self, root: bytes, *, blind_since_ms: int | None = None, reason: str = "start") -> int:
        """Rescans ``root``, emits what changed since the snapshot (and an agent_blind alarm when
        there was a snapshot to compare with), saves the new snapshot; returns the number of changes."""
        self.counters["rescans"] += 1
        start_ms = int(self._clock() * 1000)
        prev = self.load(root)
        entries = scan(root, self._exclude)
        if prev is None:
            self.save(root, entries, start_ms)
            log.info("snapshot_first %s", kv(root=root, entries=len(entries)))
            return 0
        since_ms = blind_since_ms if blind_since_ms is not None else prev.taken_ms
        changed_since = blind_since_ms * 1_000_000 if blind_since_ms is not None else None
        events: list[AccessEvent] = []
        n = 0
        for activity, path, new_path, e in diff(prev.entries, entries, changed_since):
            n += 1
            events.append(self._event(activity, root, path, new_path, e, prev.entries.get(path), start_ms))
            if len(events) >= self._batch:
                self._emit(events)
                events = []
        end_ms = int(self._clock() * 1000)
        root_text = name_text(root)[0]
        seconds = max(0, end_ms - since_ms) / 1000
        events.append(make_event(
            Activity.OTHER, uid=uuid.uuid4().hex, time=end_ms, user_name=self._agent_user,
            attribution=Attribution.AGENT, device=self.device, source=Source.AGENT, share=root_text,
            file_path=root_text, alarm=ALARM_BLIND, reconciled=True,
            message=(f"The agent was blind on {root_text} for {seconds:.1f} s ({reason}; from "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(since_ms / 1000))} until the rescan "
                     f"ended); the rescan found {n} changes, published as reconciled events."),
        ))
        self._emit(events)
        self.save(root, entries, end_ms)
        self.counters["reconciled"] += n
        log.warning("agent_blind root=%r reason=%s seconds=%.1f changes=%d", root, reason, seconds, n)
        return n

    def _event(self, activity: Activity, root: bytes, path: bytes, new_path: bytes | None, e: Entry,
               old: Entry | None, now_ms: int) -> AccessEvent:
        text, esc = name_text(path)
        new_text, esc2 = name_text(new_path) if new_path is not None else (None, False)
        uid = e.uid if activity != Activity.DELETE else (old.uid if old is not None else e.uid)
        owner = self._owners.owner_of_uid(uid)
        # Creates and updates carry the time the file says it changed; deletes and renames the rescan's.
        t = min(now_ms, e.mtime_ns // 1_000_000) if activity in (Activity.CREATE, Activity.UPDATE) else now_ms
        return make_event(
            activity, uid=uuid.uuid4().hex, time=max(0, t), user_name=owner.user_name, user_uid=owner.user_uid,
            attribution=Attribution.OWNER, device=self.device, source=Source.FILE, share=name_text(root)[0],
            file_path=text, file_new_path=new_text, names_escaped=esc or esc2,
            file_size=e.size if not e.is_dir and activity != Activity.DELETE else None, reconciled=True,
        )


class BlindGuard:
    """Runs rescans off the capture path: once at start for every root, and after each inotify
    overflow (overflows that arrive during a rescan are folded into one more rescan)."""

    def __init__(self, reconciler: Reconciler, clock: Callable[[], float] = time.time) -> None:
        import threading

        self.reconciler = reconciler
        self._clock = clock
        self._cv = threading.Condition()
        self._pending: dict[bytes, tuple[int | None, str]] = {}
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name="dw-reconcile", daemon=True)

    def start(self, rescan_now: bool = True) -> None:
        with self._cv:
            if rescan_now:
                for root in self.reconciler.roots:
                    self._pending[root] = (None, "agent start (changes while it was stopped)")
        self._thread.start()

    def overflow(self) -> None:
        """The kernel dropped events: rescan every root for changes since now."""
        now = int(self._clock() * 1000)
        with self._cv:
            for root in self.reconciler.roots:
                since, _ = self._pending.get(root, (now, ""))
                self._pending[root] = (now if since is None else min(since, now), "inotify queue overflow")
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                root, (since, reason) = next(iter(self._pending.items()))
                del self._pending[root]
                self._busy = True
            try:
                self.reconciler.reconcile(root, blind_since_ms=since, reason=reason)
            except Exception:
                log.exception("reconcile_failed %s", kv(root=root))
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def stop(self, snapshot: bool = True, timeout: float = 60.0) -> None:
        """Finishes a running rescan, then (clean stop) snapshots every tree for the next start."""
        self.wait_idle(timeout)
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if snapshot:
            self.reconciler.snapshot_all()
