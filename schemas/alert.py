"""The alert: aligned with OCSF Detection Finding (class_uid 2004).

Every alert explains itself: which signal crossed which threshold in which window, since when,
on which files. Times are epoch milliseconds like the events.
"""
from __future__ import annotations

import enum
from typing import Annotated

import msgspec

OCSF_DETECTION_FINDING = 2004
# Alerts about dataward itself (a failed self-test): paged and stored, never a reason to halt a backup.
SELFTEST_TAG = "dataward.selftest"


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def ocsf_id(self) -> int:
        # OCSF severity_id: 2 Low, 3 Medium, 4 High, 5 Critical
        return {"low": 2, "medium": 3, "high": 4, "critical": 5}[self.value]

    @property
    def rank(self) -> int:
        return self.ocsf_id


class _Row(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A nested record stored as a ClickHouse named Tuple: the store reads it by position."""

    def __getitem__(self, index: int) -> object:
        return getattr(self, self.__struct_fields__[index])

    def __len__(self) -> int:
        return len(self.__struct_fields__)


class Evidence(_Row, frozen=True):
    """One reason behind an alert (OCSF ``evidences``), so the alert explains itself.

    ``kind``: "rule" (a rule crossed its threshold: ``value`` is the real peak count in
    ``window_s``, ``threshold`` what it had to reach), "feature" (the user's activity over
    ``window_s`` when the incident last changed), "data" (what kind of data was hit:
    ``long_lived``, ``churn`` (files the same user created minutes earlier), ``new``).
    """

    kind: str
    name: str
    value: float
    threshold: float = 0.0
    window_s: float = 0.0
    rule_uid: str = ""
    level: str = ""
    first_seen: int = 0
    last_seen: int = 0


class AnomalyAnalysis(_Row, frozen=True):
    """A learned baseline's view (OCSF ``anomaly_analyses``): how far ``observed`` is from normal.

    ``model`` names the baseline ("ewma" online, or "iforest:user:<name>@<version>"); ``deviation``
    is a z-score for EWMA and the IsolationForest anomaly score (higher = stranger) otherwise.
    """

    model: str
    feature: str
    baseline: float
    observed: float
    deviation: float


class Alert(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One finding about one user. ``uid`` is stable for an incident so that an escalation
    (high -> critical) of the same burst updates rather than duplicates it downstream."""

    uid: Annotated[str, msgspec.Meta(min_length=1)]
    title: str
    rule: str  # short rule name, e.g. "mass_rename"
    rule_uid: str  # the rule's UUID in the policy
    severity: Severity
    severity_id: int
    user: str
    first_seen: int  # time of the first event counted in the evidence
    detected_at: int  # time of the event that crossed the threshold
    signal: str  # what was counted, e.g. "renames"
    observed: float
    threshold: float
    window_s: float
    file_count: int
    paths: list[str]  # a sample of affected paths, first ones first
    devices: list[str] = []
    shares: list[str] = []
    tags: list[str] = []  # ATT&CK, e.g. "attack.t1486"
    description: str = ""
    class_uid: int = OCSF_DETECTION_FINDING
    # An incident is one alert uid with versions: each growth (more files, another device, rule or
    # severity) or the closing update is a new version, so receivers dedupe on (uid, version).
    version: int = 1
    last_seen: int = 0  # time of the newest event in the evidence (0: same as detected_at)
    status: str = "open"  # open | closed (went quiet) | resolved (a person closed it)
    drill: bool = False  # raised by a self-test: stored and shown, never paged
    evidences: list[Evidence] = []
    anomaly_analyses: list[AnomalyAnalysis] = []


class IncidentAction(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Who did what to an incident, and when (``dataward incident resolve ID``): the audit trail."""

    uid: Annotated[str, msgspec.Meta(min_length=1)]  # the incident (alert uid)
    time: int  # epoch ms
    action: str  # "resolved"
    actor: str  # who, as given or the login name
    note: str = ""
    version: int = 0  # the alert version this produced
