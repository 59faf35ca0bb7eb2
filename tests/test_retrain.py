"""Continual learning: warm and scratch retrains through the real pipeline and gate, triggers
from the monitor's figures, a failing retrain, automatic rollback, and the decision history."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pandas as pd
import pytest

from conftest import run_cli, synthetic_events, write_jsonl, write_synthetic_project
from test_monitoring import drifted_events, persistence_batch
from tsops import registry
from tsops.lifecycle import decisions, triggers
from tsops.lifecycle.promotion import promote
from tsops.lifecycle.retrain import Retrainer, check_rollback, retrain, utcnow
from tsops.monitoring.history import ALL_STEPS, AccuracyRow, MonitorHistory
from tsops.monitoring.monitor import StreamMonitor
from tsops.settings import Project
from tsops.streaming.runner import run_stream

NAME = "synthetic"
QUICK = {
    "model": {"threads": 1, "hidden_size": 16, "epochs": 1},
    "backtest": {"holdout": 48},
    "retrain": {"holdout": 48, "warm_window": 300, "scratch_window": 400, "warm_epochs": 1},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A small synthetic project with its own tracking store: a champion trained on the latest
    400 steps and a second version (a challenger) trained on the latest 300."""
    from tsops.features.ingest import ingest
    from tsops.models.pipeline import train

    project = write_synthetic_project(tmp_path_factory.mktemp("retrain") / "proj", extra=QUICK)
    ingest(project, quiet=True)
    train(project, quick=True, show_progress=False, window=400)
    promote(project)
    train(project, quick=True, show_progress=False, window=300)
    return project


def champion(project: Project) -> int | None:
    return registry.version_for_alias(registry.connect(project), NAME, registry.CHAMPION)


def with_retrain(project: Project, **fields: object) -> Project:
    s = project.settings
    return Project(project.root, s.model_copy(update={"retrain": s.retrain.model_copy(update=fields)}))


def test_warm_retrain_fine_tunes_the_champions_weights_and_records_the_decision(project) -> None:
    client = registry.connect(project)
    before = champion(project)
    _, start = registry.load_forecaster(project, version=before)
    d = retrain(with_retrain(project, warm_learning_rate=1e-6), mode="warm", reason="test warm")
    assert d.kind == "retrain" and d.mode == "warm" and d.outcome in ("promoted", "rejected")
    assert d.version is not None and d.version != before and d.previous == before
    assert d.reason.startswith("test warm; backtest MAE")
    assert {"backtest_mae", "gate_challenger_mae", "gate_champion_mae", "epochs"} <= set(d.figures)
    _, tuned = registry.load_forecaster(project, version=d.version)
    # Fine-tuned from the champion's weights (one epoch at a tiny rate), with its scales kept;
    # its prediction intervals and the shares of its correction are chosen afresh on the new
    # validation origins.
    fresh = {
        "interval_quantiles": start.cfg.interval_quantiles,
        "interval_floor": start.cfg.interval_floor,
        "correction_weights": start.cfg.correction_weights,
    }
    assert replace(tuned.cfg, **fresh) == start.cfg
    moved = max(
        float((a - b).abs().max())
        for a, b in zip(tuned.net.state_dict().values(), start.net.state_dict().values(), strict=True)
    )
    assert 0 < moved < 1e-3
    assert client.get_model_version(NAME, str(d.version)).tags["tsops.retrain.mode"] == "warm"
    assert decisions.history(client, NAME)[-1] == d
    assert champion(project) == (d.version if d.outcome == "promoted" else before)


def test_scratch_retrain_trains_on_the_latest_window_including_streamed_observations(
    project, tmp_path
) -> None:
    events = synthetic_events(project, 48)
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'events.jsonl', events)}")
    result = run_cli(
        "retrain", "--project", str(project.root), "--mode", "scratch", "--reason", "new data", "--json"
    )
    assert result.returncode == 0, result.stderr  # promoted or rejected: a decision, not an error
    d = json.loads(result.stdout.strip().splitlines()[-1])
    assert d["kind"] == "retrain" and d["mode"] == "scratch" and d["outcome"] in ("promoted", "rejected")
    run = registry.connect(project).get_run(d["run_id"])
    last = pd.Timestamp(events[-1]["timestamp"])
    first_origin = run.data.tags["tsops.backtest_window"].split("/")[0]
    assert pd.Timestamp(first_origin) == last - pd.Timedelta(hours=48)  # the holdout ends at the stream's end
    # 400 steps per entity: 400 - 48 (holdout) - 24 (horizon) - 168 (lookback - 1) origins, 10 % validation.
    assert run.data.params["train_rows"] == str(5 * (160 - 16))
    assert run.data.tags["tsops.retrain.reason"] == "new data"


def test_a_failing_retrain_records_its_reason_and_leaves_the_champion(stream_project, tmp_path) -> None:
    # No plausible range: the stream takes the absurd values (finite), their rolling statistics
    # overflow, and with every entity poisoned training has nothing left to learn from.
    project = stream_project(**QUICK, schema={"outlier_spread": None})
    events = synthetic_events(project, 30)
    for i in range(5):
        events[2 * 5 + i]["value"] = 1e300
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'events.jsonl', events)}")
    client = registry.connect(project)
    before = champion(project), registry.version_for_alias(client, NAME, registry.CHALLENGER)
    d = retrain(project, mode="scratch", reason="poisoned data")
    assert d.outcome == "failed" and d.version is None and d.champion == before[0]
    assert "non-finite" in d.reason and d.reason.startswith("poisoned data; retrain failed")
    assert (champion(project), registry.version_for_alias(client, NAME, registry.CHALLENGER)) == before
    assert d.run_id is None  # refused before a run was started: nothing half-logged
    assert decisions.history(client, NAME)[-1] == d


def test_a_retrain_failing_in_training_marks_its_run_failed_with_the_reason(project) -> None:
    client = registry.connect(project)
    before = champion(project)
    s = project.settings
    changed = Project(
        project.root, s.model_copy(update={"model": s.model.model_copy(update={"hidden_size": 8})})
    )
    d = retrain(changed, mode="warm", reason="settings changed")
    assert d.outcome == "failed" and champion(project) == before
    assert "cannot warm-start" in d.reason and "hidden_size" in d.reason
    run = client.get_run(d.run_id)
    assert run.info.status == "FAILED" and "cannot warm-start" in run.data.tags["tsops.retrain.failed"]
    assert decisions.history(client, NAME)[-1] == d


def test_rollback_when_the_new_champions_online_mae_is_worse_than_the_previous(project) -> None:
    client = registry.connect(project)
    old = champion(project)
    assert old is not None
    new = max(v.version for v in registry.versions(project) if v.version != old)
    history = MonitorHistory.for_project(project)
    # The previous champion's latest figure (later than any a stream in an earlier test wrote)
    history.write([AccuracyRow(utcnow(), None, old, ALL_STEPS, 5.0, 300)], [])
    promote(project, new, force=True)

    def online(mae: float, n: int) -> list[AccuracyRow]:
        history.write([AccuracyRow(utcnow(), None, new, ALL_STEPS, mae, n)], [])
        return history.accuracy()

    assert check_rollback(project, online(9.0, 150)) is None  # fewer errors than rollback.window (200)
    d = check_rollback(project, online(6.0, 250))  # worse than 5.0 × 1.1
    assert d is not None and d.kind == "rollback" and d.outcome == "rolled_back"
    assert d.version == new and d.champion == old and d.trigger == "online_accuracy"
    assert d.figures["online_mae"] == 6.0 and d.figures["previous_online_mae"] == 5.0
    assert champion(project) == old
    assert check_rollback(project, history.accuracy()) is None  # judged once; a rollback is never undone
    assert decisions.history(client, NAME)[-1] == d
    # Promoted again, and this time within the margin: kept, and recorded as such.
    promote(project, new, force=True)
    kept = check_rollback(project, online(5.4, 250))
    assert kept is not None and kept.outcome == "kept" and champion(project) == new


def test_drift_above_the_threshold_retrains_from_scratch_then_the_cooldown_holds(project) -> None:
    current = champion(project)
    monitor = StreamMonitor(project, persist=False, reference_version=current)
    monitor.on_batch(drifted_events(project, 60, 1.5), [], [])  # 300 observations ≥ min_rows 200
    snapshot = monitor.snapshot()
    assert snapshot["drift"]["scores"]["value"]["score"] > 0.25
    retrainer = Retrainer(project)
    d = retrainer.maybe_retrain(snapshot)
    assert d is not None and d.kind == "retrain" and d.trigger == "drift" and d.mode == "scratch"
    assert d.reason.startswith("drift PSI") and d.figures["trigger_feature"] == "value"
    assert d.previous == current
    assert retrainer.maybe_retrain(snapshot) is None  # retrain.cooldown: 1h
    assert Retrainer(project).maybe_retrain(snapshot) is None  # also for a new process: the log says when


def test_accuracy_and_schedule_triggers_fire_by_the_policy(tmp_path) -> None:
    project = write_synthetic_project(
        tmp_path / "p",
        extra={
            "retrain": {
                "triggers": [{"type": "accuracy", "margin": 0.5}, {"type": "schedule", "interval": "2h"}]
            }
        },
    )
    accuracy, schedule = triggers.build(project)
    monitor = StreamMonitor(project, persist=False, reference_loader=lambda v: None)
    now = utcnow()
    context = triggers.TriggerContext(
        champion=1, backtest_mae=8.0, last_retrain=now - timedelta(hours=1), now=now
    )
    events, records = persistence_batch(project, "a", 0, 100)
    monitor.on_batch(events, [], records)
    assert accuracy.check(monitor.snapshot(), context) is None  # 76 errors per step: fewer than min_samples
    events, records = persistence_batch(project, "a", 100, 200)
    monitor.on_batch(events, [], records)
    hit = accuracy.check(monitor.snapshot(), context)  # online MAE 12.5 > 8.0 × 1.5
    assert hit is not None and hit.mode == "warm" and hit.figures["online_mae"] == pytest.approx(12.5)
    assert accuracy.check(monitor.snapshot(), triggers.TriggerContext(1, 9.0, None, now)) is None  # ≤ 13.5
    assert schedule.check({}, context) is None
    later = triggers.TriggerContext(1, 8.0, now - timedelta(hours=3), now)
    fired = schedule.check({}, later)
    assert fired is not None and fired.mode == "warm"


def test_status_json_shows_the_decision_history(project) -> None:
    client = registry.connect(project)
    recorded = [d.as_dict() for d in decisions.history(client, NAME)]
    result = run_cli("status", "--project", str(project.root), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["decisions"]
    assert shown == recorded
    assert shown[0]["kind"] == "promote" and shown[0]["reason"] == "first model"
    assert all(d["reason"] for d in shown)
