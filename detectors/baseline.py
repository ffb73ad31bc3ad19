"""Learned baselines, online: per-minute EWMA mean and variance of a user's activity.

Each finished minute's feature vector (``MODEL_FEATURES``, the same columns the offline
IsolationForest models are trained on from ClickHouse, see ``detectors.model``) is scored against
the user's history before being folded in: as a z-score per feature here, or by a trained model
when the caller passes one. Until ``min_minutes`` have been seen nothing is scored (too little
history). Scores become OCSF anomaly analyses; on their own they never raise a critical.

Counts per minute are heavy-tailed and skewed (most minutes idle, a few busy; KiB written spans
orders of magnitude), so the mean and variance are of ``log1p(count)``, as the offline models see
them, with a spread of at least ``MIN_SPREAD`` (a factor of ~1.65). On raw counts an idle user's
spread was floored at 1 KiB, and a single 20 KiB save was "20 standard deviations" out; ordinary
users' busy minutes crossed z=4 dozens of times a day. A feature is only anomalous at or above its
floor (``FLOORS``): 20 events, or 16 MiB written, in the minute.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import msgspec

from dwcore.schemas.alert import AnomalyAnalysis

MODEL_FEATURES: tuple[str, ...] = (
    "writes", "overwrites", "deletes", "renames", "ext_renames", "high_entropy_writes", "dirs", "kib_written",
)
_MODEL_INDEX = {name: i for i, name in enumerate(MODEL_FEATURES)}
ALPHA = 0.05  # ~20-minute memory
MAX_IDLE_FOLDS = 60  # idle minutes folded in one go (longer gaps count as one hour of zeros)
MIN_OBSERVED = 20.0  # a spike of fewer events in a minute is never an anomaly, whatever the z
MIN_KIB = 16_384.0  # nor is writing less than 16 MiB in a minute
FLOORS: tuple[float, ...] = tuple(MIN_KIB if f == "kib_written" else MIN_OBSERVED for f in MODEL_FEATURES)
MIN_SPREAD = 0.5  # in log1p space: a minute ~e^(z * 0.5) times the usual before z reaches the threshold
LOG_SPACE = 1  # Ewma.space of a baseline kept over log1p(count)

# (user, vector) -> analyses, or None when no trained model covers the user (the EWMA then
# decides); supplied by the caller from trained models (I/O stays outside, see detectors.model).
Scorer = Callable[[str, list[float]], "list[AnomalyAnalysis] | None"]


class Ewma(msgspec.Struct, array_like=True):
    minute: int = -1
    current: list[int] = []
    mean: list[float] = []  # of log1p(count) per minute
    var: list[float] = []
    n: int = 0
    space: int = 0  # LOG_SPACE; 0 is a state from before, kept over raw counts: relearned

    def _fold(self, vec: list[float]) -> None:
        if not self.mean:
            self.mean, self.var = list(vec), [0.0] * len(vec)
        else:
            mean, var = self.mean, self.var
            for i, x in enumerate(vec):
                d = x - mean[i]
                mean[i] += ALPHA * d
                var[i] = (1 - ALPHA) * (var[i] + ALPHA * d * d)
        self.n += 1

    def _fold_idle(self, k: int) -> None:
        """``k`` idle minutes (zeros) folded at once, in closed form.

        With r = 1 - ALPHA each zero takes mean m to r*m and var v to r*(v + ALPHA*m^2); over k of
        them mean_k = r^k*m and var_k = r^k*(v + m^2*(1 - r^k)) (the ALPHA-weighted sum of r^j
        telescopes). A fresh baseline starts from the first zero minute as ``_fold`` would.
        """
        if k <= 0:
            return
        if not self.mean:
            self._fold([0.0] * len(MODEL_FEATURES))
            k -= 1
        rk = (1 - ALPHA) ** k
        self.var = [rk * (v + m * m * (1 - rk)) for m, v in zip(self.mean, self.var, strict=True)]
        self.mean = [rk * m for m in self.mean]
        self.n += k

    def zscores(self, vec: list[float], z_min: float) -> list[AnomalyAnalysis]:
        """``vec`` holds raw counts; the scoring is in log1p space, the report in counts."""
        out = []
        for i, x in enumerate(vec):
            if x < FLOORS[i]:
                continue
            sd = math.sqrt(self.var[i]) if self.var else 0.0
            base = self.mean[i] if self.mean else 0.0
            z = (math.log1p(x) - base) / max(sd, MIN_SPREAD)
            if z >= z_min:
                out.append(AnomalyAnalysis(model="ewma", feature=MODEL_FEATURES[i], baseline=round(math.expm1(base), 2),
                                           observed=float(x), deviation=round(z, 1)))
        return out

    def add(self, t: int, counts: dict[str, int], z_min: float, min_minutes: int,
            user: str = "", scorer: Scorer | None = None) -> list[AnomalyAnalysis]:
        """Count an event's features; when a minute ends, score it and fold it into the baseline."""
        minute = t // 60_000
        found: list[AnomalyAnalysis] = []
        if self.space != LOG_SPACE:
            self.mean, self.var, self.n, self.space = [], [], 0, LOG_SPACE
        if minute > self.minute:
            if self.minute >= 0 and self.current:
                vec = [float(v) for v in self.current]
                scored = scorer(user, vec) if scorer is not None else None
                if scored is not None:
                    found = scored
                elif self.n >= min_minutes:
                    found = self.zscores(vec, z_min)
                self._fold([math.log1p(v) for v in vec])
                self._fold_idle(min(minute - self.minute - 1, MAX_IDLE_FOLDS))
            self.minute = minute
            self.current = [0] * len(MODEL_FEATURES)
        if minute == self.minute:
            current = self.current
            for name, v in counts.items():
                i = _MODEL_INDEX.get(name)
                if i is not None and v:
                    current[i] += v
        return found
