"""With `retrain.gate_beats_best_baseline`, the gate refuses a challenger that does not beat the
best baseline of its own backtest, with the reason, and `--force` still overrides it."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from conftest import write_synthetic_project
from tsops import registry
from tsops.lifecycle.promotion import promote


def _version(client: MlflowClient, name: str, ratio: float, tmp: Path) -> int:
    """A registered version whose training run recorded `ratio` (no model needs loading: the
    baseline condition is checked before the backtest comparison)."""
    with_run = client.create_run(client.get_experiment_by_name("synthetic").experiment_id)
    client.log_metric(with_run.info.run_id, "lstm_vs_best_baseline", ratio)
    mv = client.create_model_version(name, source=str(tmp / "model"), run_id=with_run.info.run_id)
    client.set_model_version_tag(name, mv.version, "tsops.best_baseline", "mstl")
    return int(mv.version)


def test_gate_refuses_a_challenger_that_does_not_beat_the_best_baseline(tmp_path: Path) -> None:
    project = write_synthetic_project(tmp_path / "p", extra={"retrain": {"gate_beats_best_baseline": True}})
    client = registry.connect(project)
    name = project.settings.model.name
    client.create_registered_model(name)

    losing = _version(client, name, 1.08, tmp_path)
    refused = promote(project, version=losing)
    assert not refused.promoted
    assert refused.reason == f"v{losing} does not beat the best baseline (mstl): backtest MAE ratio 1.080 ≥ 1"
    assert client.get_model_version(name, str(losing)).tags["tsops.gate_rejected"] == refused.reason
    assert registry.version_for_alias(client, name, registry.CHAMPION) is None

    winning = _version(client, name, 0.93, tmp_path)
    assert promote(project, version=winning).promoted  # the first model: no comparison needed
    assert promote(project, version=losing, force=True).promoted
