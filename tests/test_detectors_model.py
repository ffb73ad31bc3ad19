"""Learned baselines: `dataward model train` over a real chDB history, then scoring minutes."""
from __future__ import annotations

import json

from rich.console import Console

from dataward.config import Config
from dataward.model_train import load_models, train_models
from dwcore.detectors.engine import evaluate
from dwcore.detectors.policy import load_policy
from dwcore.schemas.alert import Severity
from dwcore.schemas.event import Activity, make_event
from dwcore.sinks.store import Store

T0 = 1_800_000_000_000 - 3 * 3600_000


def test_train_versioned_models_and_score_an_unusual_minute(tmp_path) -> None:
    cfg = Config(data_dir=str(tmp_path / "data"))
    policy = load_policy(overrides={})
    events = []
    # Three hours of alice's normal work: 3-6 small text writes a minute in two folders.
    for m in range(180):
        for i in range(3 + m % 4):
            events.append(make_event(Activity.CREATE if i % 2 else Activity.UPDATE, uid=f"a{m}-{i}",
                                     time=T0 + m * 60_000 + i * 1000, user_name="alice", device="fs1",
                                     file_path=f"/srv/a/{m % 2}/f{i}.txt", entropy=4.5, bytes_written=2000))
    with Store.open(cfg.store_dsn, cfg.store.database) as store:
        store.writer.ensure_schema()
        store.writer.insert_events(events)
    days = 100_000  # the synthetic history is in the future of now() - N days for any N: take all
    target = train_models(cfg, policy, days, cfg.models_dir, Console(file=open("/dev/null", "w")))
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["window_days"] == days and manifest["rows"] == 180
    assert set(manifest["models"]) == {"user:alice", "everyone:*"}
    assert (cfg.models_dir / "latest").read_text().strip() == "v1"
    assert train_models(cfg, policy, days, cfg.models_dir, Console(file=open("/dev/null", "w"))).name == "v2"

    models = load_models(cfg.models_dir, policy)
    assert models is not None and models.version == "v2"
    normal = [4.0, 2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 8.0]
    assert models("alice", normal) == []
    (analysis,) = models("alice", [400.0, 400.0, 0.0, 0.0, 0.0, 390.0, 40.0, 80_000.0])
    assert analysis.model == "iforest:user:alice@v2" and 0 < analysis.deviation < 1  # the forest's score
    assert analysis.feature == "kib_written" and analysis.observed == 80_000 and analysis.baseline < 50
    assert models("nobody", normal) == []  # scored by the everyone model, and normal

    # In the engine: a minute of mass high-entropy writes scored by the model, never critical alone.
    burst = [make_event(Activity.CREATE, uid=f"b{i}", time=T0 + i * 100, user_name="alice", device="fs1",
                        file_path=f"/srv/a/new/{i}.bin", entropy=7.99, magic_type="zip", bytes_written=200_000)
             for i in range(300)]
    burst.append(make_event(Activity.READ, uid="tick", time=T0 + 61_000, user_name="alice", device="fs1",
                            file_path="/srv/a/x"))
    _, alerts = evaluate(None, "alice", burst, policy, models)
    (alert,) = alerts
    assert alert.rule == "behaviour_anomaly" and alert.severity == Severity.MEDIUM
    assert alert.anomaly_analyses[0].model == "iforest:user:alice@v2"
