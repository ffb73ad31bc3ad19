"""The Linux capture backend: recursive inotify with little Python per event.

Same contract as ``watcher.FileWatcher`` (``emit`` gets batches of AccessEvents from one thread;
``on_queue_overflow`` raises the alarm), built on ``inotify_lean``: one reader thread reads up to
1 MiB of kernel events at a time, subscribed only to what becomes an event (create, delete,
moves, writes), turns them into events with one stat per event, folds repeated writes to a path
into one Update per batch and pairs moves by cookie; a dispatcher thread hands batches to
``emit`` so a slow publisher never stops the reading. A directory created (or moved in) is
watched at once and scanned, so files created inside it before its watch existed are reported.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from dwcore.agents import inotify_lean as ino
from dwcore.agents.attribution import OwnerResolver
from dwcore.agents.blindspots import BlindSpots
from dwcore.agents.watcher import ALARM_QUEUE_OVERFLOW, STUCK_S, agent_user, join_while_progressing
from dwcore.logfmt import kv
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event
from dwcore.schemas.paths import name_text

log = logging.getLogger(__name__)

DIR_MASK = (ino.IN_CREATE | ino.IN_DELETE | ino.IN_MOVED_FROM | ino.IN_MOVED_TO | ino.IN_MODIFY
            | ino.IN_CLOSE_WRITE | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF | ino.IN_ONLYDIR | ino.IN_DONT_FOLLOW
            | ino.IN_EXCL_UNLINK)
_WRITE = ino.IN_MODIFY | ino.IN_CLOSE_WRITE
_SELF_GONE = ino.IN_DELETE_SELF | ino.IN_MOVE_SELF
ROOT_CHECK_S = 1.0  # how often a deleted root is looked for again
# A batch goes out this long after its first event: each millisecond is files an attacker finishes
# before detection sees the first (quiet machine, 200 files/s: 50 ms lost 16, 20 ms ~10; detection.md).
FLUSH_INTERVAL_S = 0.02
# A file found by a new directory's scan may also have its IN_CREATE queued (created between watch
# and scan), maybe for a later batch: the scan's paths are remembered this long to report it once.
SCANNED_KEEP_S = 2.0
_LABEL = {a: a.label for a in Activity}
_SPECIAL = ino.IN_Q_OVERFLOW | ino.IN_IGNORED


class LeanWatcher:
    def __init__(self, roots: Sequence[str], device: str, emit: Callable[[list[AccessEvent]], None],
                 clock: Callable[[], float] = time.time, *, exclude: Sequence[str] = (),
                 resolver: OwnerResolver | None = None, flush_interval_s: float = FLUSH_INTERVAL_S,
                 max_batch: int = 1000) -> None:
        if not roots:
            raise ValueError("LeanWatcher needs at least one root to watch")
        self.roots = [os.path.abspath(r) for r in roots]
        self._roots_b = [os.fsencode(r) for r in self.roots]
        self.device = device
        self._emit = emit
        self._clock = clock
        self._exclude = frozenset(os.fsencode(os.path.abspath(p)) for p in exclude)
        self._exclude_below = tuple(x + b"/" for x in self._exclude)  # one C call per event
        self._resolver = resolver or OwnerResolver()
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._agent_user = agent_user()
        self._ino: ino.Inotify | None = None
        self._wd_path: dict[int, bytes] = {}
        self._wd_share: dict[int, str] = {}
        self._moves: dict[int, tuple[bytes, bool, str, int]] = {}  # cookie -> (path, is_dir, share, age)
        self._scanned: dict[bytes, float] = {}  # path reported by a new directory's scan -> monotonic time
        self._cv = threading.Condition()
        self._ready: list[list[AccessEvent]] = []
        self._stopping = threading.Event()
        self._reader_done = threading.Event()
        self._reader: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None
        self._id_prefix = uuid.uuid4().hex[:16]
        self._n = 0
        self._root_wd: dict[int, bytes] = {}  # wd -> root it watches (the roots' own watches)
        self._missing: dict[bytes, float] = {}  # deleted roots -> monotonic time they went
        self._checked = 0.0
        self.blind = BlindSpots(device, self._agent_user, self._hand_over, self._uid, clock)
        self.counters = {"seen": 0, "emitted": 0, "overflows": 0, "coalesced": 0, "skipped": 0,
                         "emit_errors": 0, "lost": 0, "watches": 0}

    # lifecycle

    def start(self) -> None:
        for root in self.roots:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"watch root is not a directory: {root}")
        self._ino = ino.Inotify()
        for root_b, root in zip(self._roots_b, self.roots, strict=True):
            self._watch_tree(root_b, root, report=None)
        self._stopping.clear()
        self._reader_done.clear()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="dw-lean-dispatch", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="dw-lean-inotify", daemon=True)
        self._dispatcher.start()
        self._reader.start()
        log.info("watch_started backend=inotify device=%s roots=%s watches=%d", self.device, ",".join(self.roots),
                 len(self._wd_path))

    def stop(self, timeout: float = 10.0, drain_s: float = 2.0) -> None:
        """Reads what the kernel still holds (until quiet, up to ``drain_s``), emits it, stops."""
        if self._reader is not None:
            deadline = time.monotonic() + drain_s
            last, quiet = -1, 0
            while time.monotonic() < deadline and quiet < 3:
                time.sleep(self._interval)
                seen = self.counters["seen"]
                quiet = quiet + 1 if seen == last else 0
                last = seen
            self._stopping.set()
            self._reader.join(timeout)
            self._reader = None
        self._reader_done.set()
        with self._cv:
            self._cv.notify_all()
        if self._dispatcher is not None:
            join_while_progressing(self._dispatcher, max(timeout, STUCK_S),
                                   lambda: self.counters["emitted"] + self.counters["lost"])
            self._dispatcher = None
        if self._ino is not None:
            self._ino.close()
            self._ino = None
        log.info("watch_stopped backend=inotify device=%s %s", self.device,
                 " ".join(f"{k}={v}" for k, v in self.counters.items()))

    # watches

    def _excluded(self, path: bytes) -> bool:
        return path in self._exclude or path.startswith(self._exclude_below)

    def _add(self, path: bytes, share: str) -> int | None:
        assert self._ino is not None
        try:
            wd = self._ino.add_watch(path, DIR_MASK)
        except OSError as exc:
            self.blind.watch_failed(os.fsencode(share), path, exc)  # a blind spot: said out loud
            return None
        self._wd_path[wd] = path
        self._wd_share[wd] = share
        if path in self._roots_b:
            self._root_wd[wd] = path
        self.counters["watches"] = len(self._wd_path)
        return wd

    def _watch_tree(self, top: bytes, share: str, report: list[AccessEvent] | None,
                    pending: dict[bytes, int] | None = None) -> None:
        """Watches ``top`` and every directory below; with ``report``, adds a Create for each entry
        found (they were created before the watch existed). ``pending`` (paths already reported in
        this batch) keeps an entry that the scan and the new watch both saw from being reported twice."""
        stack = [top]
        while stack:
            d = stack.pop()
            if self._excluded(d) or self._add(d, share) is None:
                continue
            try:
                with os.scandir(d) as it:
                    for e in it:
                        is_dir = e.is_dir(follow_symlinks=False)
                        if report is not None and not self._excluded(e.path):
                            if pending is not None:
                                if e.path in pending:
                                    continue
                                pending[e.path] = len(report)
                                self._scanned[e.path] = time.monotonic()
                            report.append(self._event(Activity.CREATE, e.path, None, share, is_dir))
                        if is_dir:
                            stack.append(e.path)
            except OSError:
                continue

    # translation (reader thread)

    def _uid(self) -> str:
        self._n += 1
        return f"{self._id_prefix}{self._n:016x}"

    def _event(self, activity: Activity, path: bytes, new_path: bytes | None, share: str, is_dir: bool,
               now_ms: int | None = None) -> AccessEvent:
        resolver = self._resolver
        try:  # name_text, inlined for the common case (UTF-8 names, no new name)
            text, esc = path.decode("utf-8"), False
        except UnicodeDecodeError:
            text, esc = name_text(path)
        new_text, esc2 = name_text(new_path) if new_path is not None else (None, False)
        size = None
        if activity == Activity.DELETE:
            owner = resolver.resolve(text)
            resolver.forget(text)
        else:
            target = new_text or text
            try:
                st = os.stat(new_path or path, follow_symlinks=False)
                size = None if is_dir else st.st_size
            except OSError:
                st = None
            if new_text is not None:
                resolver.moved(text, new_text)
            owner = resolver.resolve(target, st)
        self._n += 1
        return AccessEvent(  # built directly, not through make_event: this runs for every event
            activity_id=activity, activity_name=_LABEL[activity], uid=f"{self._id_prefix}{self._n:016x}",
            time=now_ms if now_ms is not None else int(self._clock() * 1000),
            user_name=owner.user_name, user_uid=owner.user_uid, attribution=Attribution.OWNER, device=self.device,
            source=Source.FILE, share=share, file_path=text, file_new_path=new_text, file_size=size,
            names_escaped=esc or esc2,
        )

    def _translate(self, raw: list[tuple[int, int, int, bytes]], out: list[AccessEvent],
                   pending: dict[bytes, int]) -> None:
        now = int(self._clock() * 1000)
        counters = self.counters
        wd_path = self._wd_path
        exclude, exclude_below = self._exclude, self._exclude_below
        seen = coalesced = 0
        for wd, mask, cookie, name in raw:
            if mask & _SPECIAL:
                if mask & ino.IN_Q_OVERFLOW:
                    self.on_queue_overflow()
                else:
                    wd_path.pop(wd, None)
                    self._wd_share.pop(wd, None)
                    self._root_wd.pop(wd, None)
                continue
            if mask & _SELF_GONE and wd in self._root_wd:
                self._root_gone(wd, moved=bool(mask & ino.IN_MOVE_SELF))
                continue
            base = wd_path.get(wd)
            if base is None or not name:
                continue  # self events of a watched dir: its parent reports the change
            seen += 1
            path = base + b"/" + name
            if mask & _WRITE and path in pending:  # a Create or Update of it is already in the batch
                coalesced += 1
                continue
            if exclude and (path in exclude or path.startswith(exclude_below)):
                counters["skipped"] += 1
                continue
            share = self._wd_share[wd]
            is_dir = bool(mask & ino.IN_ISDIR)
            if mask & _WRITE:
                pending[path] = len(out)
                out.append(self._event(Activity.UPDATE, path, None, share, False, now))
            elif mask & ino.IN_CREATE:
                if path in pending or (self._scanned and self._scanned.pop(path, None) is not None):  # scan had it
                    coalesced += 1
                    continue
                pending[path] = len(out)
                out.append(self._event(Activity.CREATE, path, None, share, is_dir, now))
                if is_dir:
                    self._watch_tree(path, share, out, pending)
            elif mask & ino.IN_DELETE:
                pending.pop(path, None)
                self._scanned.pop(path, None)
                out.append(self._event(Activity.DELETE, path, None, share, is_dir, now))
            elif mask & ino.IN_MOVED_FROM:
                pending.pop(path, None)
                self._scanned.pop(path, None)
                self._moves[cookie] = (path, is_dir, share, 0)
            elif mask & ino.IN_MOVED_TO:
                src = self._moves.pop(cookie, None)
                if src is None:  # moved in from outside the watched trees
                    out.append(self._event(Activity.CREATE, path, None, share, is_dir, now))
                    if is_dir:
                        self._watch_tree(path, share, out, pending)
                    continue
                out.append(self._event(Activity.RENAME, src[0], path, share, is_dir, now))
                if is_dir:
                    self._moved_dir(src[0], path)
        counters["seen"] += seen
        counters["coalesced"] += coalesced
        # A move whose other half never came within one more read left the watched trees.
        for cookie, (path, is_dir, share, age) in list(self._moves.items()):
            if age >= 1:
                del self._moves[cookie]
                out.append(self._event(Activity.DELETE, path, None, share, is_dir, now))
            else:
                self._moves[cookie] = (path, is_dir, share, age + 1)

    def _root_gone(self, wd: int, moved: bool) -> None:
        """A root was deleted or moved away: drop its watches (a moved tree's would report under
        the wrong paths), raise the alarm, and look for it again every ROOT_CHECK_S."""
        assert self._ino is not None
        root = self._root_wd.pop(wd)
        inside = root + b"/"
        for w, p in list(self._wd_path.items()):
            if p == root or p.startswith(inside):
                self._ino.rm_watch(w)
                self._wd_path.pop(w, None)
                self._wd_share.pop(w, None)
        self.counters["watches"] = len(self._wd_path)
        self._missing[root] = time.monotonic()
        self.blind.root_deleted(root, moved)

    def _check_missing(self, out: list[AccessEvent], pending: dict[bytes, int]) -> None:
        """A deleted root that exists again is watched again; what is in it is reported as Creates."""
        if not self._missing or time.monotonic() - self._checked < ROOT_CHECK_S:
            return
        self._checked = time.monotonic()
        for root, since in list(self._missing.items()):
            if not os.path.isdir(root):
                continue
            del self._missing[root]
            before = len(out)
            self._watch_tree(root, os.fsdecode(root), out, pending)
            self.blind.root_recreated(root, time.monotonic() - since, len(out) - before)

    def _moved_dir(self, old: bytes, new: bytes) -> None:
        old_slash = old + b"/"
        for wd, p in list(self._wd_path.items()):
            if p == old:
                self._wd_path[wd] = new
            elif p.startswith(old_slash):
                self._wd_path[wd] = new + p[len(old):]

    def _read_loop(self) -> None:
        assert self._ino is not None
        out: list[AccessEvent] = []
        pending: dict[bytes, int] = {}
        last = time.monotonic()
        while not self._stopping.is_set():
            if self._ino.wait(self._interval):
                try:
                    raw = self._ino.read()
                except OSError:
                    log.exception("inotify_read_failed")
                    continue
                try:
                    self._translate(raw, out, pending)
                except Exception:
                    log.exception("inotify_translate_failed %s", kv(events=len(raw)))
            elif self._moves:
                self._translate([], out, pending)
            self._check_missing(out, pending)
            if out and (len(out) >= self._max_batch or time.monotonic() - last >= self._interval):
                self._hand_over(out)
                out, pending = [], {}
                last = time.monotonic()
                if self._scanned:
                    self._scanned = {p: t for p, t in self._scanned.items() if t >= last - SCANNED_KEEP_S}
            elif not out:
                last = time.monotonic()
        raw = self._ino.read() if self._ino is not None else []
        self._translate(raw, out, pending)
        self._translate([], out, pending)  # unpaired moves out
        if out:
            self._hand_over(out)

    def _hand_over(self, batch: list[AccessEvent]) -> None:
        with self._cv:
            self._ready.append(batch)
            self._cv.notify()

    # dispatch (one thread, so emit is never called concurrently)

    def _dispatch_loop(self) -> None:
        while True:
            with self._cv:
                while not self._ready and not self._reader_done.is_set():
                    self._cv.wait(self._interval)
                if not self._ready and self._reader_done.is_set():
                    return
                batches, self._ready = self._ready, []
            batch = [e for b in batches for e in b]
            for i in range(0, len(batch), self._max_batch * 4):
                self._emit_batch(batch[i : i + self._max_batch * 4])

    def _emit_batch(self, batch: list[AccessEvent]) -> None:
        for attempt in range(20):
            try:
                self._emit(batch)
                self.counters["emitted"] += len(batch)
                return
            except Exception:
                self.counters["emit_errors"] += 1
                log.exception("emit_failed events=%d attempt=%d action=retry", len(batch), attempt + 1)
                time.sleep(0.5)
        self.counters["lost"] += len(batch)
        log.error("emit_failed events=%d action=lost", len(batch))

    # overflow

    def on_queue_overflow(self) -> None:
        self.counters["overflows"] += 1
        now = int(self._clock() * 1000)
        batch = []
        for root in self.roots:
            log.warning("inotify_queue_overflow device=%s root=%s overflows=%d action=events_lost_rescan",
                        self.device, root, self.counters["overflows"])
            batch.append(make_event(
                Activity.OTHER, uid=self._uid(), time=now, user_name=self._agent_user,
                attribution=Attribution.AGENT, device=self.device, source=Source.AGENT, share=root,
                file_path=root, alarm=ALARM_QUEUE_OVERFLOW,
                message=("The kernel inotify queue overflowed: file events under this root were lost; the agent "
                         "rescans the tree and reports what changed as reconciled events. Raise "
                         "fs.inotify.max_queued_events (e.g. 1048576)."),
            ))
        self._hand_over(batch)
