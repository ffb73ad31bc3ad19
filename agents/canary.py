"""Canaries: believable decoy files that no person or job has a reason to touch.

``plant`` writes valid files of common types (a spreadsheet, a Word document, a PDF, a CSV
export, a text note) with names an attacker looks for, back-dates them, and records each in a
registry in the agent's data dir (``canaries.json``). ``CanaryStage`` marks every watcher event
on a recorded path ``canary=True``; ``CanaryReadWatch`` adds the reads the file watcher does not
subscribe to (ransomware reads a file before it encrypts it), on the canaries alone, so reads
elsewhere never reach the kernel queue.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec

from dwcore.logfmt import kv
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event
from dwcore.schemas.paths import name_bytes, name_text

log = logging.getLogger(__name__)

REGISTRY_FILE = "canaries.json"


class Canary(msgspec.Struct, frozen=True):
    path: str  # text form of schemas.paths
    escaped: bool
    kind: str
    sha256: str
    size: int
    planted_at: int  # epoch ms


class Registry(msgspec.Struct):
    canaries: list[Canary] = []


# believable content of common types

_NAMES = ["Grace", "Omar", "Lena", "Tobias", "Priya", "Mateo", "Hannah", "Kenji", "Sofia", "Daniel"]
_LAST = ["Keller", "Haddad", "Novak", "Brandt", "Iyer", "Garcia", "Lund", "Sato", "Rossi", "Meyer"]


def _people(rng: random.Random, n: int) -> list[tuple[str, str, int]]:
    return [(rng.choice(_NAMES), rng.choice(_LAST), rng.randrange(48_000, 185_000, 500)) for _ in range(n)]


def _zip(parts: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in parts.items():
            z.writestr(name, text)
    return buf.getvalue()


_CT = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Types xmlns="http://schemas.openxmlformats.org/'
       'package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-'
       'package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>{}</Types>')
_RELS = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="http://schemas.'
         'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
         'openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="{}"/></Relationships>')


def xlsx(rng: random.Random) -> bytes:
    rows = ['<row r="1"><c r="A1" t="inlineStr"><is><t>Name</t></is></c><c r="B1" t="inlineStr"><is><t>Salary'
            '</t></is></c></row>']
    for i, (first, last, pay) in enumerate(_people(rng, 40), start=2):
        rows.append(f'<row r="{i}"><c r="A{i}" t="inlineStr"><is><t>{first} {last}</t></is></c>'
                    f'<c r="B{i}"><v>{pay}</v></c></row>')
    sheet = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet xmlns="http://schemas.'
             f'openxmlformats.org/spreadsheetml/2006/main"><sheetData>{"".join(rows)}</sheetData></worksheet>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel_ns = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    workbook = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<workbook {ns} {rel_ns}><sheets>'
                '<sheet name="Payroll" sheetId="1" r:id="rId1"/></sheets></workbook>')
    wb_rels = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="http://schemas.'
               'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
               'openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
               '</Relationships>')
    over = ('<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.'
            'spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="'
            'application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>')
    return _zip({"[Content_Types].xml": _CT.format(over), "_rels/.rels": _RELS.format("xl/workbook.xml"),
                 "xl/workbook.xml": workbook, "xl/_rels/workbook.xml.rels": wb_rels,
                 "xl/worksheets/sheet1.xml": sheet})


def docx(rng: random.Random) -> bytes:
    paras = "".join(f"<w:p><w:r><w:t>{t}</w:t></w:r></w:p>" for t in (
        "Minutes of the board meeting", f"Present: {', '.join(f'{a} {b}' for a, b, _ in _people(rng, 5))}",
        "1. Acquisition shortlist and valuation ranges (confidential)",
        "2. Restructuring plan: headcount changes per department", "3. Banking relationships and credit lines"))
    doc = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="http://schemas.'
           f'openxmlformats.org/wordprocessingml/2006/main"><w:body>{paras}</w:body></w:document>')
    over = ('<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
            'wordprocessingml.document.main+xml"/>')
    return _zip({"[Content_Types].xml": _CT.format(over), "_rels/.rels": _RELS.format("word/document.xml"),
                 "word/document.xml": doc})


def pdf(rng: random.Random) -> bytes:
    lines = ["Master services agreement - signed copy"] + [
        f"Party: {a} {b}, annual fee EUR {p}" for a, b, p in _people(rng, 8)]
    text = " ".join(f"({ln}) Tj T*" for ln in lines)
    stream = f"BT /F1 11 Tf 14 TL 72 760 Td {text} ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
            b"/Contents 4 0 R >>",
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def csv(rng: random.Random) -> bytes:
    rows = ["customer_id,name,email,iban,credit_limit"]
    for i, (a, b, p) in enumerate(_people(rng, 200)):
        rows.append(f"{10_000 + i},{a} {b},{a.lower()}.{b.lower()}@example.com,"
                    f"DE{rng.randrange(10**19, 10**20)},{p // 10}")
    return ("\n".join(rows) + "\n").encode()


def txt(rng: random.Random) -> bytes:
    hosts = ["vpn", "nas01", "backup", "erp", "mail"]
    return ("Access notes (do not share)\n\n" + "".join(
        f"{h}.corp.internal  user: admin{rng.randrange(1, 9)}  pass: "
        f"{''.join(rng.choice('abcdefghkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789') for _ in range(14))}\n"
        for h in hosts)).encode()


KINDS: dict[str, tuple[str, Callable[[random.Random], bytes]]] = {
    "xlsx": ("Payroll_2026_Q3.xlsx", xlsx),
    "pdf": ("Customer_Contracts_signed.pdf", pdf),
    "docx": ("Board_Minutes_confidential.docx", docx),
    "csv": ("customers_export_full.csv", csv),
    "txt": ("passwords_backup.txt", txt),
}


# registry

def registry_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / REGISTRY_FILE


def load(data_dir: str | os.PathLike[str]) -> list[Canary]:
    path = registry_path(data_dir)
    try:
        return msgspec.json.decode(path.read_bytes(), type=Registry).canaries
    except FileNotFoundError:
        return []


def _save(data_dir: str | os.PathLike[str], canaries: Sequence[Canary]) -> None:
    path = registry_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(Registry(list(canaries)))))
    os.replace(tmp, path)


def plant(dirs: Iterable[str | bytes], data_dir: str | os.PathLike[str], kinds: Sequence[str] = tuple(KINDS),
          *, seed: int | None = None, now: Callable[[], float] = time.time) -> list[Canary]:
    """Writes one decoy of each kind into each directory (existing files are never overwritten)
    and records them; returns the new canaries."""
    rng = random.Random(seed)
    known = load(data_dir)
    have = {c.path for c in known}
    planted: list[Canary] = []
    for d in dirs:
        dir_b = os.fsencode(os.path.abspath(d))
        if not os.path.isdir(dir_b):
            raise NotADirectoryError(os.fsdecode(dir_b))
        for kind in kinds:
            name, make = KINDS[kind]
            path_b = os.path.join(dir_b, name.encode())
            text, escaped = name_text(path_b)
            if text in have or os.path.lexists(path_b):
                continue
            data = make(rng)
            tmp = os.path.join(dir_b, b".~" + name.encode() + b"." + uuid.uuid4().hex[:6].encode())
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            age = rng.randrange(30, 400) * 86400 + rng.randrange(86400)
            os.utime(tmp, (now() - age, now() - age))  # an old file draws less suspicion than a new one
            os.rename(tmp, path_b)
            planted.append(Canary(text, escaped, kind, hashlib.sha256(data).hexdigest(), len(data),
                                  int(now() * 1000)))
    if planted:
        _save(data_dir, known + planted)
    return planted


class CanarySet:
    """The recorded canaries, reloaded when the registry file changes (checked at most once a second)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, grace_ms: int = 2000) -> None:
        self.path = registry_path(data_dir)
        self.data_dir = data_dir
        self.grace_ms = grace_ms  # planting's own rename must not trip the alarm
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self.by_path: dict[str, Canary] = {}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return False
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            self.by_path = {c.path: c for c in load(self.data_dir)}
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("canary_registry_unreadable path=%s error=%s action=keep_previous", self.path, exc)
            return False
        return True

    def hit(self, path: str | None, t: int) -> bool:
        c = self.by_path.get(path) if path else None
        return c is not None and t >= c.planted_at + self.grace_ms


class CanaryStage:
    __name__ = "canary"

    def __init__(self, canaries: CanarySet) -> None:
        self.canaries = canaries

    def __call__(self, batch: list[AccessEvent]) -> list[AccessEvent]:
        cs = self.canaries
        cs.refresh()
        if not cs.by_path:
            return batch
        out = []
        for ev in batch:
            if not ev.canary and (cs.hit(ev.file_path, ev.time) or cs.hit(ev.file_new_path, ev.time)):
                ev = msgspec.structs.replace(ev, canary=True)
            out.append(ev)
        return out


Early = Callable[[list[AccessEvent], bool], None]


class CanaryReadWatch:
    """Reports reads of canaries (inotify IN_ACCESS on the canary files only) as Read events,
    at most one per canary per ``every_ms``. Linux only; elsewhere it does nothing.

    With ``early`` (the fast path's door), each touch goes there first, from this thread, the
    moment the kernel reports it: no watcher batch window, no enrichment stage in front of it.
    Writes (IN_MODIFY on the canary itself) are watched then too and go to ``early`` only, since
    the file watcher publishes its own Update of that write; ``early(events, published)`` says
    which of the two it got."""

    def __init__(self, canaries: CanarySet, device: str, emit: Callable[[list[AccessEvent]], None], *,
                 user_of: Callable[[str], tuple[str, str]], every_ms: int = 1000,
                 clock: Callable[[], float] = time.time, early: Early | None = None) -> None:
        self.canaries = canaries
        self._early = early
        self.device = device
        self._emit = emit
        self._user_of = user_of
        self._every_ms = every_ms
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wds: dict[int, Canary] = {}
        self._last: dict[tuple[str, int], int] = {}
        self.counters = {"reads": 0, "writes": 0, "watch_errors": 0}

    def start(self) -> None:
        from dwcore.agents.inotify_lean import Inotify

        try:
            self._ino = Inotify()
        except (OSError, AttributeError) as exc:
            log.warning("canary_read_watch_unavailable %s", kv(error=exc))
            return
        self._arm()
        self._thread = threading.Thread(target=self._loop, name="dw-canary-reads", daemon=True)
        self._thread.start()

    def _arm(self) -> None:
        from dwcore.agents.inotify_lean import IN_ACCESS, IN_DONT_FOLLOW, IN_MODIFY

        mask = IN_ACCESS | IN_DONT_FOLLOW | (IN_MODIFY if self._early is not None else 0)
        for wd in list(self._wds):
            self._ino.rm_watch(wd)
        self._wds = {}
        for c in self.canaries.by_path.values():
            try:
                wd = self._ino.add_watch(name_bytes(c.path, c.escaped), mask)
            except OSError:
                self.counters["watch_errors"] += 1
                continue
            self._wds[wd] = c

    def _loop(self) -> None:
        from dwcore.agents.inotify_lean import IN_ACCESS

        while not self._stop.is_set():
            if self.canaries.refresh():
                self._arm()
            if not self._ino.wait(0.2):
                continue
            now = int(self._clock() * 1000)
            batch: list[AccessEvent] = []
            writes: list[AccessEvent] = []
            for wd, mask, _cookie, _name in self._ino.read():
                c = self._wds.get(wd)
                if c is None or now < c.planted_at + self.canaries.grace_ms:
                    continue
                act = Activity.READ if mask & IN_ACCESS else Activity.UPDATE
                if now - self._last.get((c.path, act), -10**15) < self._every_ms:
                    continue
                self._last[(c.path, act)] = now
                user, uid = self._user_of(c.path)
                (batch if act == Activity.READ else writes).append(make_event(
                    act, uid=uuid.uuid4().hex, time=now, user_name=user, user_uid=uid,
                    attribution=Attribution.OWNER, device=self.device, source=Source.FILE,
                    share=os.path.dirname(c.path), file_path=c.path, names_escaped=c.escaped, canary=True))
            self.counters["reads"] += len(batch)
            self.counters["writes"] += len(writes)
            if self._early is not None:
                try:
                    if writes:
                        self._early(writes, False)
                    if batch:
                        self._early(batch, True)
                except Exception:
                    log.exception("canary_early_failed %s", kv(events=len(batch) + len(writes)))
            if batch:
                try:
                    self._emit(batch)
                except Exception:
                    log.exception("canary_read_emit_failed %s", kv(events=len(batch)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
            self._ino.close()

