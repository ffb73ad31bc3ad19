"""A fixed mixed workload for the detectors and its summary, to pin their decisions.

Ordinary users' create/update/rename/delete spread over hours, plus one user each for the attacks
the rules know (mass rename, bulk delete, in-place and partial encryption, copy-encrypt-delete,
ransom notes, a slow attack, canary touches, an agent alarm, S3 delete storm and version purges)
and one user whose minute of 200 writes is the learned baseline's case. All time-ordered and fed
through ``stream.processing.detect`` in batches, as a worker does.

``python -m tests.detect_golden`` rewrites ``tests/data/detect_golden.json`` from the code as it is:
do that only when a decision is meant to change, and say why in the commit.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import msgspec

from dwcore.detectors.policy import Policy, load_policy
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent, Activity, Source, make_event
from dwcore.stream.processing import detect

GOLDEN = Path(__file__).parent / "data" / "detect_golden.json"
START_MS = 1_767_225_600_000
BATCH = 500


class Summary(msgspec.Struct, array_like=True):
    rule: str
    user: str
    severity: str
    status: str
    version: int
    files: int
    observed: float
    uid: str
    digest: str  # of the whole alert: explanations, evidences, anomaly analyses, paths


def _benign(rng: random.Random, n: int, users: int, span_ms: int) -> list[AccessEvent]:
    names = [f"user{u:02d}" for u in range(users)]
    acts = (Activity.CREATE,) * 35 + (Activity.UPDATE,) * 45 + (Activity.RENAME,) * 10 + (Activity.DELETE,) * 10
    step = span_ms // n
    out = []
    for i in range(n):
        user, act = names[rng.randrange(users)], acts[rng.randrange(100)]
        path = f"/srv/share{i % 4}/{user}/project{i % 97}/report-{i:07d}.docx"
        out.append(make_event(
            act, uid=f"b{i}", time=START_MS + i * step, user_name=user, user_uid=str(1000 + i % users),
            device=f"fs{i % 3}", share=f"share{i % 4}", file_path=path,
            file_new_path=path + ".old" if act == Activity.RENAME else None,
            file_size=rng.randrange(1, 1 << 20) if act in (Activity.CREATE, Activity.UPDATE) else None,
            bytes_written=rng.randrange(1, 1 << 16) if act == Activity.UPDATE else None))
    return out


def _ev(act: Activity, uid: str, ms: int, user: str, path: str, **kw: object) -> AccessEvent:
    fields: dict[str, object] = {"device": "fs0", "share": "share0", **kw}
    return make_event(act, uid=uid, time=START_MS + ms, user_name=user, file_path=path, **fields)


def _attacks() -> list[AccessEvent]:
    out: list[AccessEvent] = []
    hour = 3_600_000
    for i in range(400):  # mass rename at LockBit speed
        p = f"/srv/share0/finance/q{i % 4}/ledger-{i:06d}.xlsx"
        out.append(_ev(Activity.RENAME, f"mr{i}", hour + i * 1000 // 420, "mallory", p, file_new_path=p + ".locked"))
    for i in range(260):  # bulk delete of long-lived data
        out.append(_ev(Activity.DELETE, f"bd{i}", 2 * hour + i * 20, "bob", f"/srv/share1/archive/{i}.csv"))
    for i in range(120):  # in-place encryption
        out.append(_ev(Activity.UPDATE, f"ep{i}", 3 * hour + i * 50, "erin", f"/srv/share2/d{i % 9}/r_{i}.docx",
                       entropy=7.99, printable_ratio=0.37, magic_type="unknown", ext_mismatch=True,
                       prev_entropy=7.6, prev_magic_type="docx", bytes_written=40_000))
    for i in range(60):  # header-only / intermittent encryption
        out.append(_ev(Activity.UPDATE, f"pe{i}", 4 * hour + i * 80, "pat", f"/srv/share3/img/{i}.png",
                       entropy=6.1, magic_type="unknown", ext_mismatch=True,
                       partial_encryption="header" if i % 2 else "intermittent"))
    for i in range(80):  # copy-encrypt-delete
        p = f"/srv/share0/hr/file_{i}.pdf"
        out.append(_ev(Activity.CREATE, f"cc{i}", 5 * hour + i * 100, "carl", p + ".enc", entropy=7.99,
                       magic_type="unknown", bytes_written=90_000))
        out.append(_ev(Activity.DELETE, f"cd{i}", 5 * hour + i * 100 + 40, "carl", p))
    for i in range(8):  # ransom notes and known extensions
        note = f"/srv/share1/d{i}/HOW_TO_DECRYPT_FILES.txt"
        out.append(_ev(Activity.CREATE, f"rn{i}", 6 * hour + i * 500, "nina", note, entropy=4.2, magic_type="text"))
        p = f"/srv/share1/d{i}/plan.docx"
        out.append(_ev(Activity.RENAME, f"ke{i}", 6 * hour + i * 500 + 100, "nina", p, file_new_path=p + ".lockbit"))
    for i in range(40):  # slow attack: one encrypted overwrite every 70 s
        out.append(_ev(Activity.UPDATE, f"sl{i}", 30 * 60_000 + i * 70_000, "sam", f"/srv/share2/cad/{i}.dwg",
                       entropy=7.99, magic_type="unknown", prev_entropy=5.0, prev_magic_type="dwg"))
    for i in range(3):  # canary touches
        out.append(_ev(Activity.READ, f"ca{i}", 2 * hour + 30 * 60_000 + i * 1000, "cody",
                       f"/srv/share0/.~canary{i}.docx", canary=True))
    out.append(_ev(Activity.OTHER, "al0", 90 * 60_000, "user03", "/srv/share0", alarm="queue_overflow",
                   message="inotify queue overflowed"))
    for m in range(60):  # an hour of 5 plain writes a minute, then a minute of 200
        for i in range(5):
            out.append(_ev(Activity.CREATE, f"an{m}_{i}", m * 60_000 + i * 1000, "gina", f"/srv/w/{m}_{i}.txt",
                           entropy=4.5, magic_type="text"))
    for i in range(200):
        out.append(_ev(Activity.CREATE, f"ab{i}", hour + i * 100, "gina", f"/srv/w/burst_{i}.txt",
                       entropy=4.5, magic_type="text"))
    out.append(_ev(Activity.READ, "ar", hour + 2 * 60_000, "gina", "/srv/w/next.txt"))  # ends the minute
    arn = "arn:aws:iam::111122223333:user/eve"
    for i in range(150):  # S3: delete storm with version purges
        out.append(make_event(Activity.DELETE, uid=f"s3{i}", time=START_MS + 7 * hour + i * 10, user_name=arn,
                              device="s3", source=Source.S3, share="training-data", file_path=f"train/part-{i:05d}",
                              s3_operation="DeleteObject", s3_version_id=f"v{i}"))
    return out


def workload(seed: int = 7) -> list[AccessEvent]:
    rng = random.Random(seed)
    events = _benign(rng, 12_000, 24, 8 * 3_600_000) + _attacks()
    events.sort(key=lambda e: (e.time, e.uid))
    return events


def run(events: list[AccessEvent], policy: Policy) -> list[Alert]:
    state: dict[str, bytes] = {}
    alerts: list[Alert] = []
    for i in range(0, len(events), BATCH):
        alerts.extend(detect(state, events[i : i + BATCH], policy))
    return alerts


def summarise(alerts: list[Alert]) -> list[Summary]:
    return [Summary(rule=a.rule, user=a.user, severity=a.severity.value, status=a.status, version=a.version,
                    files=a.file_count, observed=a.observed, uid=a.uid,
                    digest=hashlib.sha256(msgspec.json.encode(a)).hexdigest()[:16]) for a in alerts]


def current() -> list[Summary]:
    return summarise(run(workload(), load_policy()))


def main() -> None:
    GOLDEN.write_bytes(msgspec.json.format(msgspec.json.encode(current())) + b"\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
