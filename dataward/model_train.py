"""`dataward model train`: per-user and per-group IsolationForest baselines from the event history.

Per user and minute, the history in ClickHouse gives the vector ``detectors.baseline
.MODEL_FEATURES`` (the same columns the detectors count online). Users with at least
``MIN_USER_MINUTES`` active minutes get a model of their own; each policy group gets one over its
members; one model covers everyone. Models are written to ``<models_dir>/v<N>/`` with a manifest
(training window, rows, per-model metrics: training minutes, the score threshold, the share of
training minutes above it) and ``latest`` names the newest version. The running pipeline loads
``latest`` at start (``load_models``). The models directory must be private to dataward: models
are pickles, and loading a pickle runs code.
"""
from __future__ import annotations

import json
import os
import pickle
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataward.config import Config
from dwcore.detectors.baseline import MODEL_FEATURES
from dwcore.detectors.model import Baseline, ModelSet, transform
from dwcore.detectors.policy import Policy

MIN_USER_MINUTES = 60
MIN_GROUP_MINUTES = 60
TREES = 100

FEATURE_SQL = """
SELECT user_name,
       countIf(activity_id IN (1, 3)) AS writes,
       countIf(activity_id = 3) AS overwrites,
       countIf(activity_id = 4) AS deletes,
       countIf(activity_id = 5) AS renames,
       countIf(activity_id = 5 AND lower(extract(file_path, '\\\\.([^./]*)$'))
               != lower(extract(ifNull(file_new_path, ''), '\\\\.([^./]*)$'))) AS ext_renames,
       countIf(entropy >= {high:Float64}) AS high_entropy_writes,
       uniqExact(replaceRegexpOne(file_path, '/[^/]*$', '')) AS dirs,
       intDiv(sum(ifNull(bytes_written, 0)), 1024) AS kib_written
FROM events
WHERE time >= now() - toIntervalDay({days:UInt32}) AND activity_id != 99
GROUP BY user_name, toStartOfMinute(time)
"""


def fetch_vectors(cfg: Config, policy: Policy, days: int) -> dict[str, list[list[float]]]:
    from dwcore.sinks.query_client import run_query

    result = run_query(FEATURE_SQL, {"high": policy.settings.high_entropy, "days": days}, dsn=cfg.store_dsn,
                       database=cfg.store.database, addr_file=cfg.query_addr_file)
    by_user: dict[str, list[list[float]]] = defaultdict(list)
    for row in result.rows:
        by_user[str(row[0])].append([float(v) for v in row[1:]])
    return dict(by_user)


def _fit(rows: list[list[float]], name: str, threshold: float) -> tuple[Baseline, dict]:
    import numpy as np
    from sklearn.ensemble import IsolationForest

    x = np.array([transform(r) for r in rows])
    model = IsolationForest(n_estimators=TREES, random_state=0).fit(x)
    scores = -model.score_samples(x)
    base = Baseline(model=model, mean=tuple(float(v) for v in x.mean(axis=0)),
                    std=tuple(float(v) for v in x.std(axis=0)), name=name)
    metrics = {"minutes": len(rows), "score_p50": round(float(np.median(scores)), 3),
               "score_p99": round(float(np.quantile(scores, 0.99)), 3),
               "above_threshold": round(float((scores >= threshold).mean()), 4)}
    return base, metrics


def train_models(cfg: Config, policy: Policy, days: int, models_dir: Path, console: Console) -> Path:
    from dwcore.extras import require

    require("sklearn", "models", "dataward model train")
    started = time.time()
    vectors = fetch_vectors(cfg, policy, days)
    threshold = policy.settings.anomaly_score
    existing = [int(p.name[1:]) for p in models_dir.glob("v*") if p.name[1:].isdigit()]
    version = max(existing, default=0) + 1
    tag = f"v{version}"
    jobs: list[tuple[str, str, list[list[float]]]] = []
    for user, rows in sorted(vectors.items()):
        if len(rows) >= MIN_USER_MINUTES:
            jobs.append(("user", user, rows))
    for group, members in sorted(policy.groups.items()):
        rows = [r for m in members for r in vectors.get(m, [])]
        if len(rows) >= MIN_GROUP_MINUTES:
            jobs.append(("group", group, rows))
    everyone = [r for rows in vectors.values() for r in rows]
    if everyone:
        jobs.append(("everyone", "*", everyone))
    models: dict[str, dict[str, Baseline]] = {"user": {}, "group": {}, "everyone": {}}
    metrics: dict[str, dict] = {}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("training IsolationForest baselines", total=len(jobs))
        for kind, name, rows in jobs:
            base, m = _fit(rows, f"iforest:{kind}:{name}@{tag}", threshold)
            models[kind][name] = base
            metrics[f"{kind}:{name}"] = m
            progress.advance(task)
    target = models_dir / tag
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(models_dir, 0o700)
    with open(target / "models.pkl", "wb") as fh:
        pickle.dump(models, fh)
    manifest = {"version": version, "trained_at": int(started * 1000), "window_days": days,
                "features": list(MODEL_FEATURES), "threshold": threshold, "users": len(vectors),
                "rows": len(everyone), "models": metrics, "seconds": round(time.time() - started, 2)}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (models_dir / "latest").write_text(tag + "\n")
    console.print(f"{len(jobs)} models ({len(models['user'])} users, {len(models['group'])} groups, "
                  f"{'1' if everyone else 'no'} global) from {len(everyone)} user-minutes -> {target}")
    return target


def load_models(models_dir: Path, policy: Policy) -> ModelSet | None:
    """The latest trained models, or None when there are none (the online EWMA decides then)."""
    try:
        tag = (models_dir / "latest").read_text().strip()
        fh = open(models_dir / tag / "models.pkl", "rb")
    except OSError:
        return None
    from dwcore.extras import require

    require("sklearn", "models", f"the trained models in {models_dir}")
    try:
        with fh:
            models = pickle.load(fh)  # noqa: S301 - our own private models directory (0700)
    except (OSError, pickle.UnpicklingError, EOFError):
        return None
    users = {u for members in policy.groups.values() for u in members}
    return ModelSet(users=models["user"], groups=models["group"], everyone=models["everyone"].get("*"),
                    group_of={u: policy.groups_of(u) for u in users}, threshold=policy.settings.anomaly_score,
                    z=policy.settings.anomaly_z, version=tag)
