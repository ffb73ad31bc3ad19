"""Learned baselines, online: per-minute EWMA mean and variance of a user's activity.

Each finished minute's feature vector (``MODEL_FEATURES``, the same columns the offline
IsolationForest models are trained on from ClickHouse, see ``detectors.model``) is scored against
the user's history before being folded in: as a z-score per feature here, or by a trained model
when the caller passes one. Until ``min_minutes`` have been seen nothing is scored (too little
history). Scores become OCSF anomaly analyses; on their own they never raise a critical.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import msgspec

from dwcore.schemas.alert import AnomalyAnalysis

MODEL_FEATURES: tuple[str, ...] = (
    "writes", "overwrites", "deletes", "renames", "ext_renames", "high_entropy_writes", "dirs", "kib_written",
)
ALPHA = 0.05  # ~20-minute memory
MAX_IDLE_FOLDS = 60  # idle minutes folded in one go (longer gaps count as one hour of zeros)
MIN_OBSERVED = 20.0  # a spike smaller than this in a minute is never an anomaly, whatever the z

# (user, vector) -> analyses, or None when no trained model covers the user (the EWMA then
# decides); supplied by the caller from trained models (I/O stays outside, see detectors.model).
Scorer = Callable[[str, list[float]], "list[AnomalyAnalysis] | None"]


class Ewma(msgspec.Struct, array_like=True):
    minute: int = -1
    current: list[int] = []
    mean: list[float] = []
    var: list[float] = []
    n: int = 0

    def _fold(self, vec: list[float]) -> None:
        if not self.mean:
            self.mean, self.var = list(vec), [0.0] * len(vec)
        else:
            for i, x in enumerate(vec):
                d = x - self.mean[i]
                self.mean[i] += ALPHA * d
                self.var[i] = (1 - ALPHA) * (self.var[i] + ALPHA * d * d)
        self.n += 1

    def zscores(self, vec: list[float], z_min: float) -> list[AnomalyAnalysis]:
        out = []
        for i, x in enumerate(vec):
            sd = math.sqrt(self.var[i]) if self.var else 0.0
            base = self.mean[i] if self.mean else 0.0
            z = (x - base) / max(sd, 1.0)  # at least one event of spread: a quiet user is not "infinitely" odd
            if z >= z_min and x >= MIN_OBSERVED:
                out.append(AnomalyAnalysis(model="ewma", feature=MODEL_FEATURES[i], baseline=round(base, 2),
                                           observed=float(x), deviation=round(z, 1)))
        return out

    def add(self, t: int, counts: dict[str, int], z_min: float, min_minutes: int,
            user: str = "", scorer: Scorer | None = None) -> list[AnomalyAnalysis]:
        """Count an event's features; when a minute ends, score it and fold it into the baseline."""
        minute = t // 60_000
        found: list[AnomalyAnalysis] = []
        if minute > self.minute:
            if self.minute >= 0 and self.current:
                vec = [float(v) for v in self.current]
                scored = scorer(user, vec) if scorer is not None else None
                if scored is not None:
                    found = scored
                elif self.n >= min_minutes:
                    found = self.zscores(vec, z_min)
                self._fold(vec)
                zeros = [0.0] * len(MODEL_FEATURES)
                for _ in range(min(minute - self.minute - 1, MAX_IDLE_FOLDS)):
                    self._fold(zeros)
            self.minute = minute
            self.current = [0] * len(MODEL_FEATURES)
        if minute == self.minute:
            for i, name in enumerate(MODEL_FEATURES):
                v = counts.get(name)
                if v:
                    self.current[i] += v
        return found
