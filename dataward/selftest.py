"""`dataward selftest`: the daily fire drill of the whole chain on a running deployment.

A drill (dataward/simulate.py) in a dedicated, watched directory, then each stage checked in the
store the deployment writes, with the time it took from the start of the burst:

- ``agent``: the drill's events reached the store (the watcher saw them, the bus or Kafka carried them);
- ``detection``: the drill's alert is stored (tagged ``drill``: never paged);
- ``delivery``: the alert router recorded the alert for the configured destinations
  (``skipped_drill`` rows in ``deliveries``), i.e. a real alert would have been queued for them;
- ``backup``: dry run of the configured halt policy on the drill's alert as if it were real:
  would the backup controller halt? (Nothing is halted by the self-test itself.)

Each result is one JSON line in ``<data_dir>/selftest.jsonl`` (the embedded store belongs to the
running process and its query endpoint is read-only, so results go beside it, not into it). A failed
self-test raises a real alert (``selftest_failed``, high, never a drill, tagged ``dataward.selftest``
so that no backup halts for it), stored like any alert (``store_failure``):

- distributed: published to dw.alerts, where the sink stores it and the deliverer pages with it;
- embedded: dropped in ``<data_dir>/alert-inbox/``, which the running `dataward run` stores (also
  when it starts again, if it was down).

It is delivered straight from the self-test too when it could not be published, or when the
deliverer is what failed (the delivery stage), and written to the alerts JSONL file when one is
configured.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec

from dataward.config import Config
from dataward.simulate import (
    DrillStore,
    NoStore,
    drill_directory,
    new_run_id,
    poll,
    simulate_rename,
    sweep_stale,
)
from dwcore.detectors.drill import drill_dir_name
from dwcore.logfmt import kv
from dwcore.schemas.alert import SELFTEST_TAG, Alert, Severity
from dwcore.sinks.backup_controller import HaltPolicy, should_halt
from dwcore.sinks.errors import StoreError

log = logging.getLogger(__name__)

SELFTEST_NAMESPACE = uuid.UUID("5e1f7e57-da7a-4a2d-9d1c-0f4b7e2c9a11")
STAGES = ("agent", "detection", "delivery", "backup")


class Stage(msgspec.Struct, frozen=True):
    name: str
    status: str  # pass | fail | skip
    seconds: float | None  # from the start of the burst until the stage was confirmed
    detail: str = ""


class SelftestResult(msgspec.Struct, frozen=True):
    run_id: str
    started_at: int  # epoch ms
    directory: str
    device: str
    passed: bool
    stages: list[Stage]
    alert_uid: str = ""  # the drill's alert, when detection passed
    failure_alert_uid: str = ""  # the selftest_failed alert raised, when it failed


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)


def _alert_row(store: DrillStore, uid: str) -> Alert | None:
    rows = store.query(
        "SELECT uid, title, rule, rule_uid, severity, severity_id, user, toUnixTimestamp64Milli(first_seen), "
        "toUnixTimestamp64Milli(detected_at), signal, observed, threshold, window_s, file_count, paths, devices, "
        "shares, tags FROM alerts WHERE uid = {uid:String} ORDER BY version DESC LIMIT 1", {"uid": uid})
    if not rows:
        return None
    r = rows[0]
    return Alert(uid=r[0], title=r[1], rule=r[2], rule_uid=r[3], severity=Severity(r[4]), severity_id=int(r[5]),
                 user=r[6], first_seen=int(r[7]), detected_at=int(r[8]), signal=r[9], observed=float(r[10]),
                 threshold=float(r[11]), window_s=float(r[12]), file_count=int(r[13]), paths=list(r[14]),
                 devices=list(r[15]), shares=list(r[16]), tags=list(r[17]))


def backup_dry_run(cfg: Config, alert: Alert) -> Stage:
    """Would the configured backup controller halt for this alert, were it a real attack?"""
    b = cfg.backup
    if not (b.bucket or b.pause_command or b.pause_url):
        return Stage("backup", "skip", None, "no backup configured (backup.bucket or a pause hook)")
    policy = HaltPolicy(min_severity=b.halt_severity, users=list(b.protect_users), paths=list(b.protect_paths),
                        halt_on_drill=True)
    real = msgspec.structs.replace(alert, drill=False)
    if should_halt(real, policy):
        return Stage("backup", "pass", 0.0, f"would halt ({alert.severity} >= halt_severity {b.halt_severity})")
    why = (f"severity {alert.severity} is below backup.halt_severity {b.halt_severity}"
           if Severity(alert.severity).rank < Severity(b.halt_severity).rank
           else "the drill's user or directory is outside backup.protect_users / protect_paths")
    return Stage("backup", "fail", None, f"would NOT halt: {why}")


def run_selftest(cfg: Config, directory: Path, timeout_s: float, files: int = 100,
                 progress: Callable[[str], None] = lambda stage: None) -> SelftestResult:
    """The drill and its checks; the drill directory is removed whatever happens."""
    store = DrillStore(cfg)
    run_id = new_run_id()
    started_at = int(time.time() * 1000)
    try:
        store.check()
    except (NoStore, StoreError) as exc:  # the pipeline is down: the most important failure to report
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        down = [Stage("agent", "fail", None, f"the store does not answer: {why}")]
        down += [Stage(name, "fail", None, "not reached: the store does not answer") for name in STAGES[1:]]
        return SelftestResult(run_id=run_id, started_at=started_at, directory=str(directory), device=cfg.device,
                              passed=False, stages=down)
    sweep_stale(directory)
    stages: list[Stage] = []
    alert_uid = ""
    deadline = time.monotonic() + timeout_s
    with drill_directory(directory, run_id):
        t0 = time.monotonic()
        simulate_rename(directory, files, ".locked", show_progress=False, target=directory / drill_dir_name(run_id))
        progress("agent")
        events = poll(lambda: store.events(run_id), max(0.0, deadline - time.monotonic()))
        stages.append(Stage("agent", "pass", _since(t0), f"{events} drill events stored") if events else
                      Stage("agent", "fail", None, f"no drill event stored within {timeout_s:g} s: is "
                                                   f"{directory} watched?"))
        progress("detection")
        found = poll(lambda: store.alert(run_id), max(0.0, deadline - time.monotonic()) if events else 0)
        if found:
            alert_uid = found.uid
            stages.append(Stage("detection", "pass", _since(t0),
                                f"{found.severity} {found.rule}, {found.file_count} files"))
        else:
            stages.append(Stage("detection", "fail", None, "no drill alert stored" if events else
                                "not reached: no events"))
    progress("delivery")
    if found is None:
        stages.append(Stage("delivery", "fail", None, "not reached: no alert"))
        stages.append(Stage("backup", "fail", None, "not reached: no alert"))
    else:
        stages.append(_delivery(cfg, store, found.uid, t0, deadline))
        progress("backup")
        alert = _alert_row(store, found.uid)
        stages.append(backup_dry_run(cfg, alert) if alert else Stage("backup", "fail", None, "alert row unreadable"))
    passed = all(s.status != "fail" for s in stages)
    return SelftestResult(run_id=run_id, started_at=started_at, directory=str(directory), device=cfg.device,
                          passed=passed, stages=stages, alert_uid=alert_uid)


def _delivery(cfg: Config, store: DrillStore, uid: str, t0: float, deadline: float) -> Stage:
    names = [d.name for d in cfg.alerts.destinations]
    if not names:
        return Stage("delivery", "skip", None, "no alert destinations configured")

    def recorded():
        rows = store.query("SELECT DISTINCT destination FROM deliveries WHERE alert_uid = {uid:String}",
                           {"uid": uid})
        return [str(r[0]) for r in rows]

    got = poll(recorded, max(1.0, deadline - time.monotonic()))
    if got:
        return Stage("delivery", "pass", _since(t0), f"routed to {', '.join(sorted(got))} (drill: not sent)")
    return Stage("delivery", "fail", None, f"no delivery record for the alert (destinations: {', '.join(names)})")


def failure_alert(result: SelftestResult, now_ms: int) -> Alert:
    failed = [s for s in result.stages if s.status == "fail"]
    first = failed[0] if failed else Stage("selftest", "fail", None)
    text = "; ".join(f"{s.name}: {s.detail}" for s in failed)
    return Alert(
        uid=str(uuid.uuid5(SELFTEST_NAMESPACE, result.run_id)), title=f"Self-test failed at {first.name}: "
        f"{first.detail}", rule="selftest_failed", rule_uid=str(SELFTEST_NAMESPACE), severity=Severity.HIGH,
        severity_id=Severity.HIGH.ocsf_id, user="dataward", first_seen=result.started_at, detected_at=now_ms,
        signal="failed stages", observed=float(len(failed)), threshold=1.0, window_s=0.0, file_count=0,
        paths=[result.directory], devices=[result.device], tags=[SELFTEST_TAG],
        description=f"The daily self-test (drill {result.run_id} in {result.directory}) failed: {text}. "
                    "Until it passes again, an attack may go unnoticed.", last_seen=now_ms)


def raise_failure(cfg: Config, alert: Alert, deliver: bool = True) -> int:
    """Deliver the failure alert through the configured destinations (own outbox beside the
    pipeline's, which belongs to the running process) and the alerts JSONL file; returns how
    many destinations had it queued and delivered or still pending after the wait."""
    from dataward.alerting import build_router
    from dwcore.sinks.jsonl import AlertJsonlWriter

    if cfg.alerts_jsonl:
        writer = AlertJsonlWriter(cfg.alerts_jsonl)
        try:
            writer.write_many([alert])
        finally:
            writer.close()
    if not deliver or not cfg.alerts.destinations:
        return 0
    outbox = Path(cfg.data_dir) / "selftest-outbox"
    own = msgspec.structs.replace(cfg, alerts=msgspec.structs.replace(cfg.alerts, outbox_dir=str(outbox)))
    router = build_router(own, lambda rows: log.info("selftest_delivery %s", kv(
        attempts=";".join(f"{d.destination}:{d.status}" for d in rows))))
    router.start()
    try:
        router.commit([alert])
        router.publish([alert])
    finally:
        router.stop()
    return len(router.destinations)


def resolve_mode(cfg: Config, mode: str) -> str:
    """auto: embedded when the data dir is a `dataward run`'s (its write-ahead log is there)."""
    if mode in ("embedded", "distributed"):
        return mode
    if mode != "auto":
        raise ValueError(f"mode must be auto, embedded or distributed, not {mode!r}")
    embedded = cfg.store_dsn.startswith("chdb://") and (Path(cfg.data_dir) / "wal").is_dir()
    return "embedded" if embedded else "distributed"


def store_failure(cfg: Config, alert: Alert, mode: str, timeout_s: float = 10.0) -> tuple[bool, str]:
    """Hands the failure alert to the store's writer: (handed over, where/why not)."""
    if mode == "embedded":
        from dataward.alert_inbox import drop

        path = drop(cfg.data_dir, alert)
        return True, f"the inbox of the run ({path.parent}), stored by it"
    from confluent_kafka import KafkaException, Producer

    from dwcore.schemas.codec import encode
    from dwcore.schemas.topics import Topics

    topic = Topics.with_prefix(cfg.kafka.topic_prefix).alerts
    failed: list[str] = []
    try:
        producer = Producer({**cfg.kafka.client_config(), "message.timeout.ms": int(timeout_s * 1000)})
        producer.produce(topic, key=alert.user.encode(), value=encode(alert),
                         on_delivery=lambda err, _msg: failed.append(str(err)) if err else None)
        left = producer.flush(timeout_s + 2)
    except (KafkaException, BufferError) as exc:
        failed.append(str(exc))
        left = 0
    if left or failed:
        why = failed[0] if failed else "no acknowledgement"
        log.warning("selftest_failure_not_published %s", kv(topic=topic, error=why[:200]))
        return False, f"not published to {topic} ({why[:200]})"
    return True, f"{topic}, stored by the sink"


def deliver_directly(result: SelftestResult, mode: str, handed: bool) -> bool:
    """Distributed: the deliverer pages with what reaches dw.alerts, unless the deliverer itself is
    what failed. Embedded: the run only stores inbox alerts, so the self-test delivers."""
    if mode == "embedded" or not handed:
        return True
    delivery = next((s for s in result.stages if s.name == "delivery"), None)
    return delivery is not None and delivery.status == "fail" and not delivery.detail.startswith("not reached")


def store_result(cfg: Config, result: SelftestResult) -> Path:
    path = Path(cfg.data_dir) / "selftest.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(msgspec.json.encode(result) + b"\n")
    return path
