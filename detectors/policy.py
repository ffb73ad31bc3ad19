"""The detection policy: Sigma-like rules as YAML data, plus settings, groups, overrides, allow-lists.

The schema is written once, as constrained msgspec Structs (``RulePolicy``, ``Settings``,
``Override``, ``Allow``); ``policy_yaml`` converts each YAML value against its field type and maps
any failure to the file and line of that value, collecting every problem in a file before raising
one ``PolicyError`` that lists them all (``dataward rules check FILE``).

Layers: the packaged ``default_policy*.yaml`` files (one per area: file rules, agent alarms, S3
rules), then a user file, then an ``overrides`` mapping (CLI). A later layer changes only the fields
it names of a rule matched by ``name``; it may also add a new rule, which must then be complete and
count a known feature (``signal``) - rules are data, not code.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from dwcore.schemas.alert import Severity

DEFAULT_POLICY_DIR = Path(__file__).parent
DEFAULT_POLICY_PATH = DEFAULT_POLICY_DIR / "default_policy.yaml"
MAX_SAMPLE_PATHS = 1000

_HEX = "[0-9a-fA-F]"
Uuid = Annotated[str, msgspec.Meta(pattern=rf"^{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}$")]
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"\S")]
Count = Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)]


class PolicyError(ValueError):
    """Permanent: the policy cannot be used. ``str()`` is one ``file:line: problem`` per line.

    ``file``/``line``/``problem`` are those of the first problem; ``problems`` lists all of them
    as ``(file, line, problem)`` in file order.
    """

    def __init__(self, file: str, line: int, problem: str,
                 problems: list[tuple[str, int, str]] | None = None) -> None:
        self.file, self.line, self.problem = file, line, problem
        self.problems = problems or [(file, line, problem)]
        super().__init__("\n".join(f"{f}:{n}: {p}" if n else f"{f}: {p}" for f, n, p in self.problems))


class RulePolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rule. ``signal`` is the feature it counts (see ``horizons.FEATURES``) unless the rule
    name is backed by its own code (``spec.RuleSpec``). An incident's severity is ``level`` once
    ``threshold`` events fall within ``window_s``, critical at ``critical_at``."""

    id: Uuid
    name: Name
    title: Text
    level: Severity
    tags: tuple[Text, ...] = ()
    description: str = ""
    falsepositives: tuple[Text, ...] = ()
    enabled: bool = True
    signal: str = ""
    threshold: Count
    window_s: Seconds
    critical_at: Count | None = None
    cooldown_s: Seconds
    sample_paths: Annotated[int, msgspec.Meta(ge=0, le=MAX_SAMPLE_PATHS)] = 20
    buckets: tuple[Text, ...] = ()  # only events on these buckets (S3) count; empty: all

    @property
    def window_ms(self) -> int:
        return round(self.window_s * 1000)

    @property
    def cooldown_ms(self) -> int:
        return round(self.cooldown_s * 1000)

    @property
    def cap(self) -> int:
        """Most event times worth keeping per window: counts are only compared up to this."""
        return max(self.critical_at or 0, self.threshold) + self.sample_paths


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How events become features. Entropy in bits per byte of the agent's sample."""

    high_entropy: Annotated[float, msgspec.Meta(ge=0, le=8)] = 7.2
    entropy_jump: Annotated[float, msgspec.Meta(gt=0, le=8)] = 1.0
    printable_drop: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.6  # text below this ratio is no longer text
    churn_s: Seconds = 1800.0  # a file the same user created this recently is churn, not long-lived data
    dir_memory_s: Seconds = 600.0  # a directory counts again as "distinct" after this long
    incident_growth: Annotated[float, msgspec.Meta(ge=1.1, le=100)] = 2.0  # new version at this x files
    anomaly_z: Annotated[float, msgspec.Meta(gt=0)] = 4.0
    anomaly_score: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.7
    anomaly_min_minutes: Annotated[int, msgspec.Meta(ge=1)] = 30
    extra_extensions: tuple[Annotated[str, msgspec.Meta(pattern=r"^\.\S{1,63}$")], ...] = ()
    extra_note_names: tuple[Text, ...] = ()
    extra_common_extensions: tuple[Annotated[str, msgspec.Meta(pattern=r"^\.\S{1,63}$")], ...] = ()
    compressed_extensions: tuple[str, ...] = (
        ".7z", ".bz2", ".gz", ".xz", ".zst", ".lz4", ".zip", ".rar", ".tgz", ".npz", ".pack", ".idx",
        ".jpg", ".jpeg", ".png", ".gif", ".webp", ".mp3", ".mp4", ".mkv", ".webm", ".ogg", ".pdf",
        ".docx", ".xlsx", ".pptx", ".odt", ".ods", ".jar", ".whl", ".gpg", ".enc", ".age", ".parquet",
    )

    @property
    def churn_ms(self) -> int:
        return int(self.churn_s * 1000)


class Match(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which events an override or allow entry applies to; every given field must match."""

    user: str | None = None
    group: str | None = None
    path_prefix: str | None = None
    process_exe: str | None = None  # exact path or glob ("/usr/bin/rsync", "/opt/backup/*")
    device: str | None = None


class Override(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Different thresholds for some paths or users: matching events are counted separately,
    against the rule with ``set`` applied."""

    match: Match
    rules: tuple[Name, ...] = ()  # empty: every rule
    set: dict[str, Any] = {}


class Allow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Events that no listed rule counts (backup service accounts, known tools)."""

    match: Match
    rules: tuple[Name, ...] = ()  # empty: every rule
    reason: Text


# Rules that mean nothing without a bucket list: enabling one without buckets is an error.
NEEDS_BUCKETS = frozenset({"s3_protected_bucket"})
OVERRIDABLE = ("level", "enabled", "threshold", "window_s", "critical_at", "cooldown_s", "sample_paths")


class Policy(msgspec.Struct, frozen=True):
    rules: tuple[RulePolicy, ...]
    sources: tuple[str, ...] = ()  # files the policy was built from, for logs
    settings: Settings = Settings()
    groups: dict[str, tuple[str, ...]] = {}
    overrides: tuple[Override, ...] = ()
    allow: tuple[Allow, ...] = ()

    def get(self, name: str) -> RulePolicy | None:
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None

    def enabled_rules(self) -> tuple[RulePolicy, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def groups_of(self, user: str) -> tuple[str, ...]:
        return tuple(g for g, members in self.groups.items() if user in members)


def matches(m: Match, user: str, groups: tuple[str, ...], path: str, exe: str | None, device: str) -> bool:
    if m.user is not None and m.user != user:
        return False
    if m.group is not None and m.group not in groups:
        return False
    if m.path_prefix is not None and not path.startswith(m.path_prefix):
        return False
    if m.device is not None and m.device != device:
        return False
    return not (m.process_exe is not None and not (exe and fnmatch.fnmatchcase(exe, m.process_exe)))


def load_policy(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Policy:
    """The packaged default policy, merged with the user file ``path`` and then ``overrides``."""
    from dwcore.detectors.policy_yaml import build_policy

    return build_policy(path, overrides)


def default_policy_files() -> list[Path]:
    """``default_policy.yaml`` first, then each area's ``default_policy_<area>.yaml`` by name."""
    extra = sorted(p for p in DEFAULT_POLICY_DIR.glob("default_policy_*.yaml"))
    return [DEFAULT_POLICY_PATH, *extra]
