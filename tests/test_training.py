"""Training, tracking and the registry on the weather example (one quick training per session)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import requests
from mlflow import MlflowClient

from conftest import run_cli
from tsops import registry
from tsops.features.store import FeatureStoreClient
from tsops.lifecycle.promotion import promote, rollback
from tsops.models import dataset
from tsops.models.pipeline import train
from tsops.settings import Project


def test_lstm_beats_both_baselines_on_the_held_out_tail(trained_weather) -> None:
    overall = trained_weather.report.overall
    assert overall["lstm"]["mae"] < overall["seasonal_naive"]["mae"]
    assert overall["lstm"]["mae"] < overall["persistence"]["mae"]
    by_step = trained_weather.report.by_step["lstm"]
    assert set(by_step) == {"mae", "rmse", "mase"} and len(by_step["mae"]) == 24


def test_training_run_is_tracked_with_lineage(weather_project, trained_weather) -> None:
    client = MlflowClient(weather_project.tracking_uri, weather_project.tracking_uri)
    run = client.get_run(trained_weather.run_id)
    assert run.data.params["model.horizon"] == "24"
    assert {"lstm_mae", "seasonal_naive_mae", "persistence_mase"} <= set(run.data.metrics)
    for baseline in ("autoets", "autotheta", "mstl"):  # statsforecast, beside the LSTM
        assert run.data.metrics[f"{baseline}_mae"] > 0 and run.data.metrics[f"{baseline}_fit_seconds"] > 0
    best = run.data.tags["tsops.best_baseline"]
    # what the network corrects, and that forecast alone on the same origins (a tag: every
    # `<name>_mae` metric is a row of the backtest table)
    assert run.data.tags["tsops.lstm_base"] == trained_weather.base
    assert trained_weather.base.startswith(("the seasonal naive at ", "the last "))
    assert float(run.data.tags["tsops.lstm_base_mae"]) == trained_weather.base_mae > 0
    assert "lstm_base_mae" not in run.data.metrics
    ratio = run.data.metrics["lstm_mae"] / run.data.metrics[f"{best}_mae"]
    assert run.data.metrics["lstm_vs_best_baseline"] == ratio
    # the ratio's and the 80% coverage's central 90% over resampled origins
    figures = run.data.metrics
    assert figures["lstm_vs_best_baseline_low"] <= ratio <= figures["lstm_vs_best_baseline_high"]
    coverage = figures["lstm_coverage_80"]
    assert figures["lstm_coverage_80_low"] <= coverage <= figures["lstm_coverage_80_high"]
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, trained_weather.epochs_run + 1))
    tags = run.data.tags
    assert len(tags["tsops.data_hash"]) == 16 and len(tags["tsops.feature_hash"]) == 16
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "backtest")}
    assert {"backtest/backtest.png", "backtest/features.json", "backtest/backtest.csv"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "backtest/backtest.png"))
    assert local.read_bytes()[:4] == b"\x89PNG"
    names = json.loads(
        Path(client.download_artifacts(run.info.run_id, "backtest/features.json")).read_text()
    )["names"]
    assert names == FeatureStoreClient(weather_project).features.names


def test_model_is_registered_with_signature_and_aliases(weather_project, trained_weather) -> None:
    client = MlflowClient(weather_project.tracking_uri, weather_project.tracking_uri)
    name = weather_project.settings.model.name
    mv = client.get_model_version_by_alias(name, "challenger")
    assert int(mv.version) == trained_weather.version
    assert client.get_model_version_by_alias(name, "champion").version == mv.version
    model = registry.load(weather_project, "champion")
    inputs = [c.name for c in model.metadata.get_input_schema().inputs]
    assert inputs == FeatureStoreClient(weather_project).features.names
    assert model.metadata.get_output_schema().input_names()[0] == "yhat_1"


def test_mlflow_models_serve_returns_the_in_process_numbers(
    weather_project, trained_weather, mlflow_serve
) -> None:
    store = FeatureStoreClient(weather_project)
    rows = dataset.build(store, 24).test.features[store.features.names].head(3)
    expected = registry.load(weather_project, "champion").predict(rows).to_numpy()
    body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    answer = requests.post(f"{mlflow_serve}/invocations", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    served = np.array([[r[f"yhat_{h}"] for h in range(1, 25)] for r in answer.json()["predictions"]])
    assert np.allclose(served, expected, atol=1e-5)


def test_gate_refuses_a_worse_challenger_force_overrides_rollback_restores(
    weather_project, trained_weather
) -> None:
    s = weather_project.settings
    weak = Project(
        weather_project.root,
        s.model_copy(
            # an untrained network is its base: the plain seasonal naive is the weak one here
            update={
                "model": s.model.model_copy(
                    update={"quick_epochs": 1, "learning_rate": 1e-7, "base": "seasonal"}
                ),
                # the gate compares the two versions' MAE, not the statistical baselines' (most
                # of a quick training's time)
                "backtest": s.backtest.model_copy(update={"baselines": []}),
            }
        ),
    )
    worse = train(weak, quick=True, show_progress=False)
    assert worse.version == trained_weather.version + 1

    refused = promote(weather_project)
    assert not refused.promoted and refused.challenger_mae > refused.champion_mae
    client = MlflowClient(weather_project.tracking_uri, weather_project.tracking_uri)
    name = s.model.name
    assert int(client.get_model_version_by_alias(name, "champion").version) == trained_weather.version
    assert "tsops.gate_rejected" in client.get_model_version(name, str(worse.version)).tags

    forced = promote(weather_project, force=True)
    assert forced.promoted
    tags = client.get_model_version(name, str(worse.version)).tags
    assert tags["tsops.forced"] == "true" and tags["tsops.forced_over"] == str(trained_weather.version)

    back = rollback(weather_project)
    assert back.version == trained_weather.version
    assert int(client.get_model_version_by_alias(name, "champion").version) == trained_weather.version


def test_status_json_lists_models_schema_entities_and_online_rows(weather_project, trained_weather) -> None:
    result = run_cli("status", "--json", "--project", str(weather_project.root))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["schema"] == {"entity": "city", "time": "date", "target": "temp", "freq": "1h"}
    assert info["entities"] == ["san_francisco", "seattle"]
    assert info["online_rows"] == 2
    assert {v["name"] for v in info["feature_views"]} == {"series_features", "series_state"}
    first = next(m for m in info["models"] if m["version"] == trained_weather.version)
    assert "champion" in first["aliases"] and first["metrics"]["lstm_mae"] > 0
    assert first["best_baseline"] in {"persistence", "seasonal_naive", "autoets", "autotheta", "mstl"}
    assert first["beats_best_baseline"] == (first["lstm_vs_best_baseline"] < 1)
    assert ("does NOT beat" in first["verdict"]) != first["beats_best_baseline"]
    low, high = first["lstm_vs_best_baseline_interval"]
    assert low <= first["lstm_vs_best_baseline"] <= high
    assert f"90% of resampled origins give {low:.3f}–{high:.3f}" in first["verdict"]
    assert first["backtest_coverage"].keys() == first["backtest_coverage_interval"].keys() == {"80", "95"}
    for level, (low, high) in first["backtest_coverage_interval"].items():
        assert low <= first["backtest_coverage"][level] <= high
    assert first["lstm_base"] == trained_weather.base and first["lstm_base_mae"] == trained_weather.base_mae
    text = run_cli("status", "--project", str(weather_project.root)).stdout
    assert f"its network corrects {trained_weather.base}: MAE {trained_weather.base_mae:.4f} alone" in text


def test_tracking_on_postgresql(postgres_server, tmp_path) -> None:
    from tsops.features.ingest import ingest
    from tsops.scaffold import init_example

    init_example(tmp_path / "syn", "synthetic", entities=3)
    url = postgres_server.create_database("mlflow_tsops")
    project = Project.load(
        tmp_path / "syn",
        environ={
            "TSOPS_TRACKING__URI": url,
            "TSOPS_MODEL__QUICK_EPOCHS": "1",
            "TSOPS_BACKTEST__HOLDOUT": "168",
        },
    )
    ingest(project, quiet=True)
    outcome = train(project, quick=True, show_progress=False)
    assert promote(project).promoted
    client = MlflowClient(url, url)
    assert int(client.get_model_version_by_alias("synthetic", "champion").version) == outcome.version
    with postgres_server.connect("mlflow_tsops") as conn, conn.cursor() as cur:
        cur.execute("select count(*) from registered_model_aliases")
        assert cur.fetchone()[0] == 2  # champion and challenger live in PostgreSQL
