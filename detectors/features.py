"""From one event (and what the user's state remembers) to the features it adds.

Weigh by what was hit: an overwrite or delete of a file the same user did not create within
``churn_s`` is destruction of long-lived data; deleting or rewriting a file the user created minutes
earlier is churn (build output, temp files, git housekeeping); creating a new high-entropy file of a
valid type (archive, compressed array, image, git pack) is normal work. Content signals come from
the agent's sampler (``entropy``, ``magic_type``, ``printable_ratio``, ``prev_*``,
``partial_encryption``); an event without them simply adds no content feature.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from dwcore.detectors.lists import Lists, base_name, extension, extension_of, parent_dir
from dwcore.detectors.memory import Lru, RecentSet, short_hash
from dwcore.detectors.policy import Settings
from dwcore.schemas.event import AccessEvent, Activity

MAX_EXTS_SEEN = 256
MAX_DIRS_SEEN = 512
UNKNOWN_TYPES = frozenset({"", "unknown", "data", "application/octet-stream"})
LONG, CHURN, NEW = "long_lived", "churn", "new"


class Memory(msgspec.Struct, array_like=True):
    created: RecentSet = msgspec.field(default_factory=lambda: RecentSet(nbytes=4096, capacity=3200))
    random_stems: RecentSet = msgspec.field(default_factory=lambda: RecentSet(nbytes=1024, capacity=800))
    # Originals of new files of a valid type named after them (gzip x.log -> x.log.gz): deleting
    # the original then is a conversion, not destruction.
    converted: RecentSet = msgspec.field(default_factory=lambda: RecentSet(nbytes=2048, capacity=1600))
    exts: Lru = msgspec.field(default_factory=Lru)
    dirs: Lru = msgspec.field(default_factory=Lru)


@dataclass
class Facts:
    """What one event means. ``counts`` feeds the horizons and the rules; ``kind`` says whose data."""

    counts: dict[str, int] = field(default_factory=dict)
    kind: str = ""  # LONG | CHURN | NEW | "" (reads, renames of unknown age)
    new_ext: str | None = None  # renames that change the extension: the new one ("" = none)
    why: str = ""  # the content evidence of an encrypted overwrite, for sample text
    unusual_ext: bool = False  # a rename to an extension that is not an everyday one

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def has(self, name: str) -> bool:
        return self.counts.get(name, 0) > 0


def _stem(path: str) -> str:
    """'/d/a.docx.locked' -> '/d/a.docx': where an encrypted copy's original lives."""
    base_at = path.replace("\\", "/").rfind("/") + 1
    dot = path.rfind(".")
    return path[:dot] if dot > base_at else path


def _is_random(ev: AccessEvent, s: Settings) -> bool:
    return ev.entropy is not None and ev.entropy >= s.high_entropy


def _content_turned_random(ev: AccessEvent, s: Settings) -> str:
    """Why this write looks like encryption of what was there ('' = it does not)."""
    magic = (ev.magic_type or "").lower()
    prev_magic = (ev.prev_magic_type or "").lower()
    if not _is_random(ev, s):
        # Header-only or intermittent encryption of a file the agent had no earlier sample of:
        # the overall entropy stays moderate, but the type the extension promises is gone.
        if ev.ext_mismatch and magic in UNKNOWN_TYPES and not prev_magic:
            return f"type lost: {magic or 'unknown'} under extension {extension(ev.file_path) or '(none)'}"
        return ""
    if ev.prev_entropy is not None and ev.entropy is not None and ev.entropy - ev.prev_entropy >= s.entropy_jump:
        return f"entropy {ev.prev_entropy:.1f}->{ev.entropy:.1f}"
    if prev_magic and prev_magic not in UNKNOWN_TYPES and magic in UNKNOWN_TYPES:
        return f"type {prev_magic}->{magic or 'unknown'}"
    if prev_magic == "text" and ev.printable_ratio is not None and ev.printable_ratio < s.printable_drop:
        return f"printable {ev.printable_ratio:.2f}"
    if ev.ext_mismatch and magic in UNKNOWN_TYPES:
        return f"type {magic or 'unknown'} != extension {extension(ev.file_path) or '(none)'}"
    if not prev_magic and ev.prev_entropy is None and magic in UNKNOWN_TYPES \
            and extension(ev.file_path) not in s.compressed_extensions:
        # No earlier sample of this path: random bytes of no known type under a name that does not
        # promise compressed content is what encryption leaves behind.
        return f"random content (entropy {ev.entropy:.1f}, no known type)"
    return ""


def classify(ev: AccessEvent, mem: Memory, lists: Lists, s: Settings) -> Facts:
    """The features ``ev`` adds for its user; updates ``mem`` (recent creations, extensions, dirs)."""
    f = Facts()
    t = ev.time
    act = ev.activity_id
    f.add("events")
    churn_ms = s.churn_ms
    path = ev.file_path
    if ev.canary:
        f.add("canary")
    d = short_hash(parent_dir(path))
    prev_dir = mem.dirs.touch(d, t, MAX_DIRS_SEEN)
    if prev_dir is None or t - prev_dir >= s.dir_memory_s * 1000:
        f.add("dirs")
    if act in (Activity.READ, Activity.OPEN, Activity.GET_ATTRIBUTES):
        f.add("reads")
        return f
    if act in (Activity.CREATE, Activity.UPDATE):
        _classify_write(ev, mem, lists, s, f)
    elif act == Activity.DELETE:
        f.add("deletes")
        if path in mem.created or path in mem.converted:
            f.kind = CHURN
            f.add("deletes_churn")
        else:
            f.kind = LONG
            f.add("deletes_long")
            if _stem(path) in mem.random_stems or path in mem.random_stems:
                f.add("encrypt_copy_delete")
                f.add("destructive")
    elif act == Activity.RENAME and ev.file_new_path:
        _classify_rename(ev, mem, lists, s, f)
    mem.created.expire(t, churn_ms // 2)
    return f


def _classify_write(ev: AccessEvent, mem: Memory, lists: Lists, s: Settings, f: Facts) -> None:
    t, path = ev.time, ev.file_path
    f.add("writes")
    if ev.bytes_written:
        f.add("kib_written", max(1, ev.bytes_written // 1024))
    if _is_random(ev, s):
        f.add("high_entropy_writes")
    overwrite = ev.activity_id == Activity.UPDATE or ev.prev_entropy is not None or ev.prev_magic_type is not None
    churn = path in mem.created
    if overwrite:
        f.add("overwrites")
        f.kind = CHURN if churn else LONG
        magic = (ev.magic_type or "").lower()
        if churn and _is_random(ev, s) and (magic in UNKNOWN_TYPES or ev.ext_mismatch):
            # The first content of a file this user just created (the agent saw the create while
            # it was still empty): an encrypted copy as much as a create with content would be.
            f.add("random_creates")
            mem.random_stems.add(_stem(path), t, s.churn_ms // 2)
        if not churn:
            f.add("overwrites_long")
            why = _content_turned_random(ev, s)
            if why:
                f.why = why
                f.add("encrypted_overwrites")
                f.add("destructive")
            if ev.partial_encryption:
                f.why = f.why or f"partial encryption ({ev.partial_encryption})"
                f.add("partial_encryption")
                if not why:
                    f.add("destructive")
    else:
        f.kind = NEW
        mem.created.add(path, t, s.churn_ms // 2)
        magic = (ev.magic_type or "").lower()
        if _is_random(ev, s) and (magic in UNKNOWN_TYPES or ev.ext_mismatch):
            f.add("random_creates")
            mem.random_stems.add(_stem(path), t, s.churn_ms // 2)
        elif magic and magic not in UNKNOWN_TYPES and not ev.ext_mismatch and _stem(path) != path:
            mem.converted.add(_stem(path), t, s.churn_ms // 2)
        if ev.partial_encryption:
            f.add("partial_encryption")
    _name_features(path, ev, mem, lists, f)


def _classify_rename(ev: AccessEvent, mem: Memory, lists: Lists, s: Settings, f: Facts) -> None:
    new_path = ev.file_new_path or ""
    f.add("renames")
    old_ext, new_ext = extension(ev.file_path), extension(new_path)
    if ev.file_path in mem.created:
        mem.created.add(new_path, ev.time, s.churn_ms // 2)  # churn follows the file
        f.kind = CHURN
    else:
        f.kind = LONG
    f.unusual_ext = bool(new_ext) and not lists.is_common(new_ext)
    if new_ext != old_ext:
        f.new_ext = new_ext
        f.add("ext_renames")
        if new_ext and not lists.is_common(new_ext) and f.kind == LONG:
            f.add("destructive")
    _name_features(new_path, ev, mem, lists, f)


def _name_features(path: str, ev: AccessEvent, mem: Memory, lists: Lists, f: Facts) -> None:
    base = base_name(path)  # split once for the three lookups below
    ext = extension_of(base)
    low = base.lower()
    if ext and not lists.is_common(ext) and mem.exts.touch(ext, ev.time, MAX_EXTS_SEEN) is None:
        f.add("new_ext")
    elif ext:
        mem.exts.touch(ext, ev.time, MAX_EXTS_SEEN)
    if lists.known_extension_of(low):
        f.add("known_ext")
        if not f.has("destructive"):
            f.add("destructive")
    if lists.is_note_of(low):
        f.add("ransom_notes")
