"""Scoring a finished minute with trained IsolationForest baselines (pure: models are passed in).

``ModelSet`` holds the fitted models the wiring loaded from disk (``dataward model train`` writes
them): one per user with enough history, one per policy group for users with little, and one
over everyone. A user is scored by the most specific model there is. The IsolationForest score
(``-score_samples``, ~0.3 normal, towards 1 for isolated points) above ``threshold`` becomes an
OCSF anomaly analysis naming the feature furthest from that model's training mean; so does a
minute far outside what the model was trained on (see ``__call__``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dwcore.detectors.baseline import FLOORS, MODEL_FEATURES
from dwcore.schemas.alert import AnomalyAnalysis


@dataclass(frozen=True)
class Baseline:
    """One fitted model and what it was trained on."""

    model: Any  # sklearn.ensemble.IsolationForest (fitted); only score_samples is used
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str  # "iforest:user:alice@v3"


@dataclass(frozen=True)
class ModelSet:
    users: Mapping[str, Baseline] = field(default_factory=dict)
    groups: Mapping[str, Baseline] = field(default_factory=dict)
    everyone: Baseline | None = None
    group_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # user -> policy groups
    threshold: float = 0.7
    z: float = 4.0  # log-space distance from the training mean that is anomalous whatever the forest says
    version: str = ""

    def pick(self, user: str) -> Baseline | None:
        if user in self.users:
            return self.users[user]
        for g in self.group_of.get(user, ()):
            if g in self.groups:
                return self.groups[g]
        return self.everyone

    def __call__(self, user: str, vector: list[float]) -> list[AnomalyAnalysis] | None:
        """The ``Scorer`` the engine calls with each finished minute of ``user`` (None: no model)."""
        base = self.pick(user)
        if base is None:
            return None
        x = [_transform(v) for v in vector]
        score = float(-base.model.score_samples([x])[0])
        # A forest isolates points inside the ranges it was trained on; far outside them every
        # point looks alike to it, so distance from the training mean (log space, spread at least
        # 0.5, i.e. ~65%) also counts. The feature furthest above normal explains it to a person.
        devs = [(x[i] - base.mean[i]) / max(base.std[i], 0.5) for i in range(len(MODEL_FEATURES))]
        i = max(range(len(devs)), key=devs.__getitem__)
        far = devs[i] >= self.z and vector[i] >= FLOORS[i]
        if score < self.threshold and not far:
            return []
        baseline = round(math.expm1(base.mean[i]), 2)
        return [AnomalyAnalysis(model=base.name, feature=MODEL_FEATURES[i], baseline=baseline,
                                observed=float(vector[i]), deviation=round(score, 3))]


def _transform(v: float) -> float:
    """Counts are heavy-tailed: the models see log1p(count)."""
    return math.log1p(max(v, 0.0))


def transform(vector: list[float]) -> list[float]:
    return [_transform(v) for v in vector]
