"""The embedded mode: the whole product in one process on one machine.

watcher --(in-process bus)--> decode/detect with per-user state --> ClickHouse (chDB), alerts
JSONL, console. Same detectors and sinks as the distributed mode; the bus replaces Kafka and the
process owns the chDB directory, serving read-only SQL on loopback for `dataward query`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dataward.agent_pipeline import build_stages, watcher_class
from dataward.alert_timing import log_alert_timing
from dataward.alerting import build_router
from dataward.backup_hook import BackupHook
from dataward.config import Config
from dataward.datadir import DataDirLock
from dataward.embedded_heartbeat import start_heartbeats
from dataward.model_train import load_models
from dataward.privacy import make_private
from dataward.store_alarm import alarm_when_disk_full
from dwcore.agents.heartbeat import Heartbeater
from dwcore.agents.inotify_limits import ensure_queue_size
from dwcore.agents.lean_watcher import LeanWatcher
from dwcore.agents.pipeline import chain
from dwcore.agents.reconcile import BlindGuard, Reconciler
from dwcore.agents.watcher import FileWatcher, agent_user
from dwcore.detectors.policy import Policy
from dwcore.logfmt import kv
from dwcore.metrics import BATCH_ROWS, EVENTS_RECEIVED
from dwcore.schemas.alert import Alert
from dwcore.schemas.ddl import ALERTS_TABLE, DEADLETTER_TABLE, DELIVERIES_TABLE
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.delivery import Delivery
from dwcore.schemas.event import AccessEvent
from dwcore.sinks.alert_router import AlertRouter
from dwcore.sinks.batcher import Batcher
from dwcore.sinks.chbackend import redact_dsn
from dwcore.sinks.custody import Sealer
from dwcore.sinks.errors import StoreFailure, StoreUnavailable
from dwcore.sinks.jsonl import AlertJsonlWriter
from dwcore.sinks.parking import Keeper, ParkingLot
from dwcore.sinks.query_auth import ensure_token
from dwcore.sinks.query_server import QueryServer
from dwcore.sinks.store import Store
from dwcore.sinks.stream_writer import EmbeddedStream
from dwcore.sinks.wal import EventWal, Logged, WalStream
from dwcore.stream.bus import BatchBus
from dwcore.stream.processing import close_quiet, detect_user, group_by_user, prepare, quiet_clock

log = logging.getLogger(__name__)

TAKE_MAX = 5_000
TAKE_WITHIN_S = 0.05
CLOSE_EVERY_S = 5.0  # how often quiet incidents get their closing version
ALERT_ROWS_FLUSH_S = 0.2


class EmbeddedPipeline:
    """Start with start(); stop with stop() (idempotent). on_alert is called for each alert."""

    def __init__(
        self,
        config: Config,
        policy: Policy,
        watch: Sequence[str],
        on_alert: Callable[[Alert], None] | None = None,
        backup: BackupHook | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.watch = [str(Path(w).resolve()) for w in watch]
        self.on_alert = on_alert
        self.backup = backup
        self.bus: BatchBus[Logged] = BatchBus()  # events with their write-ahead log numbers
        self.state: dict[str, bytes] = {}
        # Trained baselines, if `dataward model train` has made any (else the online EWMA).
        self.scorer = load_models(config.models_dir, policy)
        prepare(policy)
        self.events_processed = 0
        self._newest_event_ms: int | None = None  # the newest event time processed (see quiet_clock)
        self.alerts_raised = 0
        self._stop = threading.Event()
        self._store: Store | None = None
        self._lock: DataDirLock | None = None
        self._keeper: Keeper | None = None
        self._batcher: Batcher[Logged] | None = None
        self._wal: EventWal | None = None
        self._stream: WalStream | None = None
        self._batch_top = -1  # the highest log number of the batch in detection
        self._durable_at = 0.0
        self._publish_lock = threading.Lock()  # log order = bus order = store order (custody seals ranges)
        self._guard: BlindGuard | None = None
        self._sealer: Sealer | None = None
        self._deliveries: Batcher[Delivery] | None = None
        self._alert_rows: Batcher[Alert] | None = None
        self._router: AlertRouter | None = None
        # In-process subscription: called for every alert once it is safe in the outbox (the
        # built-in sinks first: backup halt, console, JSONL, store; add yours with subscribe()).
        self.alert_callbacks: list[Callable[[Alert], object]] = []
        self._jsonl: AlertJsonlWriter | None = None
        self._unwritten: list[Alert] = []  # alerts whose JSONL line failed; retried every batch
        self._server: QueryServer | None = None
        self._watcher: FileWatcher | LeanWatcher | None = None
        self._thread: threading.Thread | None = None
        self._beats: Heartbeater | None = None
        self._stopped = False

    def start(self) -> None:
        make_private(self.config.data_dir)  # 0700/0600 before anything sensitive is written
        # Before the store: a second process gets one line naming the holder, not chDB's traceback.
        self._lock = DataDirLock(self.config.data_dir).acquire()
        store = Store.open(self.config.store_dsn, self.config.store.database, self.config.store.retention_days,
                           self.config.store.ttl_days)
        self._store = store
        store.writer.ensure_schema()
        self._sealer = Sealer(store.writer, self.config.store.seal_interval_s)
        # One writer for the events (sinks/stream_writer.py), at the write-ahead log's numbers:
        # durable before anything acts on them, acknowledged once stored or dead-lettered, so a
        # kill -9 loses nothing and a replay stores nothing twice. The numbering starts past every
        # position the store has used (rows, dead letters, sealed blocks).
        stream = EmbeddedStream(store.writer, None)
        self._wal = EventWal(Path(self.config.data_dir) / "wal", stream.next)
        self._stream = wal_stream = WalStream(store.writer, self._wal, self._sealer, stream=stream)
        # What the store refuses goes to the deadletter table; alerts, deliveries and dead letters
        # it cannot take now are parked and replayed; parked events (from an earlier version) are
        # replayed through the stream at fresh numbers and sealed.
        self._keeper = Keeper(store.writer, ParkingLot(self.config.parked_dir), f"embedded:{self.config.device}",
                              events=self._stream.parked)
        self._keeper.start()
        keeper = self._keeper
        self._batcher = Batcher(
            alarm_when_disk_full(self._stream, self.publish, self.config.device, redact_dsn(self.config.store_dsn)),
            batch_rows=self.config.store.batch_rows,
            flush_interval_s=self.config.store.flush_interval_s,
            on_permanent=lambda batch, exc: wal_stream.refuse(batch, exc, self._park_letters),
            name="events",
        )
        self._batcher.start()
        self._deliveries = Batcher(
            store.writer.insert_deliveries,
            batch_rows=1_000,
            flush_interval_s=self.config.store.flush_interval_s,
            on_permanent=lambda rows, exc: keeper.failed(DELIVERIES_TABLE, rows, exc),
            name="deliveries",
        )
        self._deliveries.start()
        # The alerts table is written from its own thread: a chDB insert (~17 ms, ~180 ms cold, whole
        # seconds on a loaded machine) in the detecting thread would hold back the next batch's alert.
        self._alert_rows = Batcher(
            store.writer.insert_alerts,
            batch_rows=1_000,
            flush_interval_s=ALERT_ROWS_FLUSH_S,
            on_permanent=lambda rows, exc: keeper.failed(ALERTS_TABLE, rows, exc),
            name="alerts",
        )
        self._alert_rows.start()
        if self.config.alerts_jsonl:
            self._jsonl = AlertJsonlWriter(self.config.alerts_jsonl)
        self.alert_callbacks.insert(0, self._emit_alert)
        self._router = build_router(self.config, self._deliveries.add_many, subscribers=self.alert_callbacks)
        self._router.start()
        token = ensure_token(self.config.query_token_file)
        self._server = QueryServer(store.reader, self.config.query.host, self.config.query.port, token=token,
                                   limits=self.config.query.limits())
        self._server.start()
        self._server.write_addr_file(self.config.query_addr_file)
        self._thread = threading.Thread(target=self._process_loop, name="dataward-process", daemon=True)
        self._thread.start()
        for chunk in self._wal.replay(store.writer.rows,  # logged, never stored
                                      lambda seq, raw, why: wal_stream.unreadable(seq, raw, why, self._park_letters)):
            self.bus.publish(chunk)
        if self.config.agent.tune_inotify:
            ensure_queue_size()  # a fast writer must not overflow the kernel queue unnoticed
        own = [str(Path(self.config.data_dir).resolve())]  # the log and store must not feed back
        cap = self.config.capture
        emit = chain(build_stages(self.config), self.publish)
        self._watcher = watcher_class(cap.backend)(self.watch, self.config.device, emit, exclude=own)
        self._guard = BlindGuard(Reconciler(self.watch, Path(self.config.data_dir) / "state", self.config.device,
                                            emit, agent_user=agent_user(), exclude=own))
        if cap.rescan_on_overflow:
            watcher_overflow = self._watcher.on_queue_overflow
            guard = self._guard

            def overflow() -> None:
                watcher_overflow()
                guard.overflow()

            self._watcher.on_queue_overflow = overflow  # type: ignore[method-assign]
        self._watcher.start()
        self._guard.start(cap.rescan_at_start)  # after the watches exist: nothing falls in between
        self._beats = start_heartbeats(self.config.device, cap.heartbeat_s, self._watcher, self._wal, store.writer)
        log.info("embedded_started %s",
                 kv(watch=",".join(self.watch), data_dir=self.config.data_dir, query=self.query_url))

    @property
    def store(self) -> Store | None:
        return self._store

    @property
    def query_url(self) -> str:
        if not self._server:
            return ""
        host, port = self._server.address
        return f"http://{host}:{port}"

    def _process_loop(self) -> None:
        last_close = time.monotonic()
        while True:
            batch = self.bus.take(TAKE_MAX, TAKE_WITHIN_S)
            if batch:
                self._process(batch)
            elif self._stop.is_set() and self.bus.drained():
                return
            self._seal()
            if time.monotonic() - last_close >= CLOSE_EVERY_S:
                last_close = time.monotonic()
                self._close_quiet()

    def _seal(self, force: bool = False) -> None:
        if self._sealer is None:
            return
        try:
            self._sealer.tick(force)
        except StoreFailure as exc:  # sealing catches up on a later tick
            log.warning("custody_seal_failed %s", kv(error=exc))

    def _close_quiet(self) -> None:
        assert self._router is not None
        self._retry_jsonl()
        # Events still on the bus are not quiet time for their users (a backlog after a burst).
        now = quiet_clock(int(time.time() * 1000), not self.bus.drained(), self._newest_event_ms)
        for user in list(self.state):
            try:
                # Closing versions go through the outbox like any other alert version.
                alerts, _ = close_quiet(self.state, user, now, self.policy, before_commit=self._router.commit)
            except Exception:
                log.exception("close_failed %s", kv(user=user))
                continue
            self._router.publish(alerts)

    def publish(self, events: list[AccessEvent]) -> None:
        """Hand events on: written to the log, onto the bus, then fsync'ed while detection already
        works on them. An alert waits for its batch's records to be on disk (``_commit``)."""
        assert self._wal is not None
        with self._publish_lock:
            self.bus.publish(self._wal.append(events, sync=False))
        try:
            self._wal.sync()
        except OSError as exc:  # on the bus already: never handed back (a retry would log it twice)
            log.warning("wal_sync_failed %s", kv(events=len(events), error=exc, action="retry_before_alert"))

    def _park_letters(self, letters: list[DeadLetter], exc: BaseException) -> None:
        assert self._keeper is not None
        self._keeper.failed(DEADLETTER_TABLE, letters, exc)  # parked, replayed later

    def subscribe(self, callback: Callable[[Alert], object]) -> None:
        """Call ``callback(alert)`` for every alert, after it is durable in the outbox."""
        self.alert_callbacks.append(callback)

    def _process(self, logged: list[Logged]) -> None:
        assert self._batcher is not None and self._store is not None
        taken = time.time()
        self._batch_top = logged[-1][0]  # numbers only grow along the bus
        # Raw bytes in a name were repaired to the lossless escaped form when they were logged.
        events = [e for _, e in logged]
        EVENTS_RECEIVED.inc(len(events))
        BATCH_ROWS.labels("detect").observe(len(events))
        self._retry_jsonl()
        # Alerts first: they are what a human is waiting for; the event history follows within
        # the flush interval. Each user apart: one user's trouble never costs another's alert.
        assert self._router is not None
        for user, user_events in group_by_user(events).items():
            # Durable in the outbox before the user's state moves on; then every subscriber on its own.
            alerts = self._detect_user(user, user_events)
            detected = time.time()
            self._router.publish(alerts)
            if alerts:
                log_alert_timing(user_events, alerts, taken, detected, self._durable_at)
        if self.backup:  # after detection: a batch that raised an alert has already halted the backup
            self.backup.on_events(events)
        self._batcher.add_many(logged)
        self.events_processed += len(events)
        newest = max(e.time for e in events)
        if self._newest_event_ms is None or newest > self._newest_event_ms:
            self._newest_event_ms = newest

    def _detect_user(self, user: str, events: list[AccessEvent]) -> list[Alert]:
        """The user's alerts; if the batch breaks a detector, event by event, so that only the
        event that breaks it is left uncounted (the state is written only on success)."""
        try:
            return detect_user(self.state, user, events, self.policy, scorer=self.scorer, before_commit=self._commit)
        except Exception:
            log.exception("detect_failed %s", kv(user=user, events=len(events), action="one_by_one"))
        alerts: list[Alert] = []
        for ev in events:
            try:
                alerts.extend(detect_user(self.state, user, [ev], self.policy, scorer=self.scorer,
                                          before_commit=self._commit))
            except Exception:
                log.exception("detect_failed_event %s", kv(user=user, uid=ev.uid, action="not_counted"))
        return alerts

    def _commit(self, alerts: list[Alert]) -> None:
        """Before an alert exists anywhere (outbox, pager, screen): the records of its batch are
        on disk, so no alert ever names an event a crash could lose. After 5 s of failing fsyncs
        the alert goes out anyway (an attack outranks a sick disk), and says so in the log."""
        assert self._router is not None and self._wal is not None
        if alerts and not self._wal.wait_durable(self._batch_top):
            log.error("alert_before_durable %s", kv(seq=self._batch_top, alerts=len(alerts)))
        self._durable_at = time.time()
        self._router.commit(alerts)

    def _emit_alert(self, alert: Alert) -> None:
        """Every sink on its own: one that fails neither stops the others nor loses the alert
        (the JSONL line is retried, the table row parked), so the user's state, already saved as
        alerted, is true."""
        assert self._store is not None and self._keeper is not None
        self.alerts_raised += 1
        if self.backup:  # zero trust: halt the backup before anything else
            try:
                self.backup.on_alert(alert)
            except Exception:
                log.exception("backup_on_alert_failed %s", kv(uid=alert.uid))
        # The human first: a chDB insert costs ~17 ms (~180 ms for the first after start).
        if self.on_alert:
            try:
                self.on_alert(alert)
            except Exception:
                log.exception("on_alert_failed %s", kv(uid=alert.uid))
        if self._jsonl:
            self._unwritten.append(alert)
            self._retry_jsonl()
        assert self._alert_rows is not None
        self._alert_rows.add(alert)  # what the store cannot take is parked and replayed

    def _retry_jsonl(self) -> None:
        if not self._unwritten or self._jsonl is None:
            return
        try:
            self._jsonl.write_many(self._unwritten)
            self._unwritten.clear()
        except Exception:
            log.exception("alerts_jsonl_failed %s", kv(pending=len(self._unwritten), action="retry"))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # Order matters: no new events, then drain what is in flight, then flush, then close.
        if self._beats:
            self._beats.stop()
        if self._guard:
            self._guard.stop(snapshot=False)
        if self._watcher:
            self._watcher.stop()
        if self._guard and self.config.capture.snapshot_at_stop:
            self._guard.reconciler.snapshot_all()
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)
        if self._router:
            self._router.stop()  # a few seconds to deliver what is queued; the rest stays in the outbox
        if self._deliveries and not self._deliveries.close() and self._keeper:
            attempts = self._deliveries.take_pending()
            self._keeper.failed(DELIVERIES_TABLE, attempts, StoreUnavailable("store unavailable at shutdown"))
        if self._alert_rows and not self._alert_rows.close() and self._keeper:
            rows = self._alert_rows.take_pending()
            self._keeper.failed(ALERTS_TABLE, rows, StoreUnavailable("store unavailable at shutdown"))
        if self._batcher and not self._batcher.close():
            # Not parked: they are in the write-ahead log, which replays them at the next start at
            # these same numbers (stored once, sealed once).
            left = self._batcher.take_pending()
            log.warning("events_left_in_wal %s", kv(rows=len(left), action="replay_at_next_start"))
        if self._wal:
            self._wal.close()
        self._seal(force=True)
        if self._keeper:
            self._keeper.stop()
        if self._jsonl:
            self._retry_jsonl()
            self._jsonl.close()
        if self._server:
            self._server.stop()
        if self._store:
            self._store.close()
        if self._lock:
            self._lock.release()
        log.info("embedded_stopped %s", kv(events=self.events_processed, alerts=self.alerts_raised))
