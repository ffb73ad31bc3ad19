"""File activity under watched roots, as batches of AccessEvents.

watchdog's inotify observer runs in this process on its own threads; the handler only translates
and buffers, and one dispatcher thread hands batches (every 50 ms or 1,000 events) to ``emit``,
because a per-event call into Kafka is far too slow for a ransomware burst. When the kernel's
inotify queue overflows, events are lost for good: the watcher then raises an alarm event per
root and logs a WARNING, so the gap in the record is itself on the record.
"""
from __future__ import annotations

import logging
import os
import pwd
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from dwcore.agents.attribution import OwnerResolver
from dwcore.logfmt import kv
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event
from dwcore.schemas.paths import clean_text, fs_name_text, names_text

log = logging.getLogger(__name__)


# One batch handed on at stop may take long on a loaded machine (an fsync behind other I/O took
# over 10 s here): only this long without any batch going out counts as stuck.
STUCK_S = 60.0


def join_while_progressing(thread: threading.Thread, timeout: float, progress: Callable[[], int]) -> None:
    """Joins a dispatcher at stop for as long as it keeps handing events on: a backlog after a
    burst can take longer than ``timeout`` to go out, and stopping under it (the publisher closed
    behind it) would cost those events. Gives up only after ``timeout`` without any progress."""
    last = progress()
    while True:
        thread.join(timeout)
        if not thread.is_alive():
            return
        now = progress()
        if now == last:
            log.error("dispatcher_stuck_at_stop %s", kv(thread=thread.name, timeout_s=timeout, handed_on=now))
            return
        last = now

FLUSH_INTERVAL_S = 0.05
MAX_BATCH = 1000
ALARM_QUEUE_OVERFLOW = "queue_overflow"

# Only what becomes an event: leaving out open/close/access keeps reads from filling the kernel queue.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileDeletedEvent, DirDeletedEvent,
    FileMovedEvent, DirMovedEvent,
]


def agent_user() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _overflow_observer(on_overflow: Callable[[], None]):  # platform-specific class
    """An inotify observer that reports kernel queue overflows to ``on_overflow``.

    watchdog 7.1 logs the overflow and repairs its recursive watches, but offers no public hook,
    so the inotify reader is subclassed; elsewhere (not Linux) the default observer is used.
    """
    if not sys.platform.startswith("linux"):
        from watchdog.observers import Observer

        return Observer()
    from watchdog.observers.api import BaseObserver
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
    from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

    class _FD(InotifyFD):
        def handle_event(self, event: InotifyEvent) -> None:
            if event.is_queue_overflow:
                on_overflow()
            super().handle_event(event)

    class _Observer(InotifyObserver):
        def __init__(self) -> None:
            fd = _FD()
            fd.start()
            BaseObserver.__init__(self, InotifyEmitter, inotify_fd=fd)
            self._inotify_fd = fd

    return _Observer()


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FileWatcher, share: str) -> None:
        self._watcher = watcher
        self._share = share

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher._on_fs_event(event, self._share)


class FileWatcher:
    """Watches ``roots`` recursively and calls ``emit`` with batches of events."""

    def __init__(
        self,
        roots: Sequence[str],
        device: str,
        emit: Callable[[list[AccessEvent]], None],
        clock: Callable[[], float] = time.time,
        *,
        exclude: Sequence[str] = (),
        resolver: OwnerResolver | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if not roots:
            raise ValueError("FileWatcher needs at least one root to watch")
        self.roots = [os.path.abspath(r) for r in roots]
        self.device = device
        self._emit = emit
        self._clock = clock
        # The agent's own files (spool, data dir) must never feed back into the event stream.
        self._exclude = tuple(os.path.abspath(p) for p in exclude)
        self._resolver = resolver or OwnerResolver()
        self._flush_interval_s = flush_interval_s
        self._tick = min(flush_interval_s, FLUSH_INTERVAL_S)
        self._max_batch = max_batch
        self._agent_user = agent_user()
        self._lock = threading.Condition()
        self._buffer: list[AccessEvent] = []
        self._update_at: dict[str, int] = {}  # path -> index of its Update in the buffer
        self._stopping = threading.Event()
        self._observer = None
        self._dispatcher: threading.Thread | None = None
        self.counters = {"seen": 0, "emitted": 0, "overflows": 0, "coalesced": 0, "skipped": 0,
                         "emit_errors": 0, "lost": 0}

    # lifecycle

    def start(self) -> None:
        """Returns once every root is watched (watchdog adds the watches synchronously)."""
        for root in self.roots:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"watch root is not a directory: {root}")
        self._observer = _overflow_observer(self.on_queue_overflow)
        for root in self.roots:
            self._observer.schedule(_Handler(self, root), root, recursive=True, event_filter=_EVENT_FILTER)
        self._stopping.clear()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="dw-watch-dispatch", daemon=True)
        self._dispatcher.start()
        self._observer.start()
        log.info("watch_started %s", kv(device=self.device, roots=",".join(self.roots)))

    def stop(self, timeout: float = 10.0, drain_s: float = 2.0) -> None:
        """Stops watching and hands every buffered event to ``emit`` before returning.

        Activity just before the stop may still sit in the kernel queue or watchdog's queue, so
        first wait (up to ``drain_s``) until no new event has arrived for a few ticks."""
        if self._observer is not None:
            self._drain(drain_s)
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._dispatcher is not None:
            join_while_progressing(self._dispatcher, max(timeout, STUCK_S),
                                   lambda: self.counters["emitted"] + self.counters["lost"])
            self._dispatcher = None
        log.info("watch_stopped device=%s %s", self.device,
                 " ".join(f"{k}={v}" for k, v in self.counters.items()))

    def _drain(self, drain_s: float) -> None:
        deadline = time.monotonic() + drain_s
        quiet_needed, quiet = 3, 0
        last = self.counters["seen"]
        while time.monotonic() < deadline and quiet < quiet_needed:
            time.sleep(self._tick)
            seen = self.counters["seen"]
            queued = self._observer.event_queue.qsize() if self._observer is not None else 0
            quiet = quiet + 1 if seen == last and queued == 0 else 0
            last = seen

    # translation (runs on watchdog's dispatch thread)

    def _excluded(self, path: str) -> bool:
        return any(path == p or path.startswith(p + os.sep) for p in self._exclude)

    def _on_fs_event(self, event: FileSystemEvent, share: str) -> None:
        self.counters["seen"] += 1
        try:
            out = self.translate(event, share)
        except (OSError, ValueError) as exc:  # a path the schema refuses must not kill the watcher
            log.warning("event_untranslatable %s", kv(type=event.event_type, path=event.src_path, error=exc))
            out = None
        if out is None:
            self.counters["skipped"] += 1
            return
        self._add(out)

    def translate(self, event: FileSystemEvent, share: str) -> AccessEvent | None:
        """One watchdog event as an AccessEvent, or None for noise we do not record."""
        # Synthetic events are watchdog's expansion of a directory move into one event per file;
        # one Rename of the directory is the truth, and thousands of renames would look like an attack.
        if event.is_synthetic:
            return None
        src = os.fsdecode(event.src_path)
        if self._excluded(src):
            return None
        resolver = self._resolver
        if isinstance(event, FileCreatedEvent | DirCreatedEvent):
            activity, path, new_path = Activity.CREATE, src, None
        elif isinstance(event, FileModifiedEvent):
            activity, path, new_path = Activity.UPDATE, src, None
        elif isinstance(event, FileDeletedEvent | DirDeletedEvent):
            activity, path, new_path = Activity.DELETE, src, None
        elif isinstance(event, FileMovedEvent | DirMovedEvent):
            activity, path, new_path = Activity.RENAME, src, os.fsdecode(event.dest_path)
        else:
            return None
        if activity == Activity.DELETE:
            owner = resolver.resolve(path)
            resolver.forget(path)
            st = None
        else:
            target = new_path or path
            try:
                st = os.stat(target, follow_symlinks=False)
            except OSError:
                st = None  # already gone again (temp files): the remembered owner still answers
            if new_path:
                resolver.moved(path, new_path)
            owner = resolver.resolve(target, st)
        # Names are bytes: carried in the lossless text form, flagged when not UTF-8, so that an
        # attacker's `x.locked\xff` is counted like any other name and never breaks an encoder.
        (path_t, new_t, share_t), escaped = names_text(
            os.fsencode(path), os.fsencode(new_path) if new_path else None, os.fsencode(share)
        )
        return make_event(
            activity,
            uid=uuid.uuid4().hex,
            time=int(self._clock() * 1000),
            user_name=clean_text(owner.user_name),
            user_uid=owner.user_uid,
            attribution=Attribution.OWNER,
            device=self.device,
            source=Source.FILE,
            share=share_t,
            file_path=path_t,
            file_new_path=new_t,
            names_escaped=escaped,
            file_size=st.st_size if st is not None and not event.is_directory else None,
        )

    def _add(self, ev: AccessEvent) -> None:
        with self._lock:
            buf = self._buffer
            if ev.activity_id == Activity.UPDATE:
                # A large write is many IN_MODIFYs; one Update per path per batch, with the latest size.
                idx = self._update_at.get(ev.file_path)
                if idx is not None:
                    buf[idx] = ev
                    self.counters["coalesced"] += 1
                    return
                self._update_at[ev.file_path] = len(buf)
            else:
                self._update_at.pop(ev.file_path, None)
                if ev.file_new_path:
                    self._update_at.pop(ev.file_new_path, None)
            buf.append(ev)
            if len(buf) >= self._max_batch:
                self._lock.notify()

    # overflow (runs on the inotify reader thread)

    def on_queue_overflow(self) -> None:
        """The kernel dropped events: record an alarm per root and warn loudly."""
        self.counters["overflows"] += 1
        now = int(self._clock() * 1000)
        for root in self.roots:
            log.warning(
                "inotify_queue_overflow device=%s root=%s overflows=%d action=events_lost "
                "hint='raise fs.inotify.max_queued_events (see docs/agents.md) and review this share'",
                self.device, root, self.counters["overflows"],
            )
            self._add(self.overflow_alarm(root, now))

    def overflow_alarm(self, root: str, now_ms: int) -> AccessEvent:
        root_t, escaped = fs_name_text(root)
        return make_event(
            Activity.OTHER,
            uid=uuid.uuid4().hex,
            time=now_ms,
            user_name=self._agent_user,
            attribution=Attribution.AGENT,
            device=self.device,
            source=Source.AGENT,
            share=root_t,
            file_path=root_t,
            names_escaped=escaped,
            alarm=ALARM_QUEUE_OVERFLOW,
            message=(
                "The kernel inotify queue overflowed: file events under this root were lost, so the "
                "record has a gap. Raise fs.inotify.max_queued_events (e.g. sysctl -w "
                "fs.inotify.max_queued_events=1048576) and check this share for activity in the gap."
            ),
        )

    # dispatch (one thread, so emit is never called concurrently)

    def _take(self) -> list[AccessEvent]:
        batch = self._buffer[: self._max_batch]
        del self._buffer[: self._max_batch]
        # Remaining indexes shifted: forget them (costs at most a missed coalesce, never an event).
        self._update_at = {}
        return batch

    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                # A tick every interval, early when a batch is full: at most one interval of latency.
                if len(self._buffer) < self._max_batch and not self._stopping.is_set():
                    self._lock.wait(self._flush_interval_s)
                batch = self._take() if self._buffer else []
            if batch:
                self._emit_batch(batch)
            elif self._stopping.is_set():
                return

    def _emit_batch(self, batch: list[AccessEvent]) -> None:
        try:
            self._emit(batch)
        except Exception:
            # Never drop: put the batch back in front and retry after a pause.
            self.counters["emit_errors"] += 1
            log.exception("emit_failed events=%d action=retry", len(batch))
            with self._lock:
                self._buffer[:0] = batch
                self._update_at = {}
            if self._stopping.wait(0.5):
                # Stopping: one last try so a transient error does not lose the tail.
                with self._lock:
                    batch = self._take()
                try:
                    self._emit(batch)
                except Exception:
                    self.counters["lost"] += len(batch)
                    log.exception("emit_failed_at_stop events=%d action=lost", len(batch))
                    return
                self.counters["emitted"] += len(batch)  # the last try at stop counts like any other
            return
        self.counters["emitted"] += len(batch)
