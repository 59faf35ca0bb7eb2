"""`tsops train`: Feast training data → LSTM → backtest against baselines → MLflow run →
registered version with the `challenger` alias."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from tsops import leftovers, registry
from tsops.features.store import FeatureStoreClient
from tsops.models import artifact, backtest, dataset, search_space, statistical, training
from tsops.models.backtest import BacktestReport
from tsops.models.lstm import Forecaster
from tsops.models.pyfunc import output_columns
from tsops.monitoring import drift
from tsops.settings import Project


@dataclass
class TrainOutcome:
    version: int
    run_id: str
    report: BacktestReport
    seconds: float
    epochs_run: int
    left_out: dict[str, str]  # entity → why it was not trained on
    lstm_seconds: float = 0.0  # the LSTM's training alone (the rest: data, baselines, logging)
    base: str = ""  # what the network corrects, in words (training.Base.describe)
    base_mae: float = float("nan")  # that base alone on the backtest's origins
    baselines_seconds: float = 0.0  # fitting the statistical baselines, start to end
    baseline_processes: int = 1  # the processes that fitted them


MAX_LEFT_OUT_LISTED = 50  # MLflow tag values are bounded: list the first ones, count them all


def left_out_tag(left_out: Mapping[str, str]) -> str:
    """The left-out entities as a JSON tag value (the first MAX_LEFT_OUT_LISTED of them)."""
    return json.dumps(dict(list(left_out.items())[:MAX_LEFT_OUT_LISTED]))


def train(
    project: Project,
    *,
    quick: bool = False,
    show_progress: bool = True,
    params: Mapping[str, Any] | None = None,
    lineage: Mapping[str, str] | None = None,
    init: Forecaster | None = None,
    window: int | None = None,
) -> TrainOutcome:
    """Train, backtest, log and register as `challenger`. `params` overrides `model` fields
    (a tuning study's best trial); `lineage` adds tags to the run and the version. `init`:
    fine-tune this forecaster's weights (warm start); `window`: only the latest N steps per
    entity (both used by `tsops retrain`)."""
    started = time.perf_counter()
    if params:
        project = Project(project.root, search_space.apply(project.settings, params, "tuned parameters"))
    settings = project.settings
    model = settings.model
    series = settings.series
    client = registry.connect(project)
    leftovers.fail_abandoned_runs(client, project.experiment)  # of a killed earlier training
    store = FeatureStoreClient(project)
    data = dataset.build(store, model.horizon, window=window)
    commit = registry.git_commit(project.root)
    first, last = (t.isoformat() for t in data.test_window)
    tags = {
        "tsops.data_hash": data.data_hash,
        "tsops.feature_hash": store.features.definition_hash(),
        "tsops.quick": str(quick).lower(),
        "tsops.backtest_window": f"{first}/{last}",
        **({registry.LEFT_OUT_TAG: left_out_tag(data.left_out)} if data.left_out else {}),
        **({"tsops.git_commit": commit} if commit else {}),
        **(lineage or {}),
        **leftovers.owner_tags(),
    }
    run_name = "train-tuned" if params else f"train{'-quick' if quick else ''}"
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(
            {
                **{f"model.{k}": v for k, v in model.model_dump().items()},
                **{f"features.{k}": v for k, v in settings.features.model_dump().items()},
                "backtest.holdout": settings.backtest.holdout,
                "backtest.stride": settings.backtest.stride,
                "train_rows": len(data.train),
                "val_rows": len(data.val),
                "test_origins": len(data.test),
                "left_out_entities": len(data.left_out),
            }
        )

        def log_epoch(epoch: int, loss: float, val_mae: float) -> None:
            mlflow.log_metrics({"train_loss": loss, "val_mae": val_mae}, step=epoch)

        fit_started = time.perf_counter()
        result = training.fit(
            data,
            store.features,
            model,
            quick=quick,
            init=init,
            on_epoch=log_epoch,
            show_progress=show_progress,
        )
        forecaster = result.forecaster
        if model.interval_levels:
            forecaster = forecaster.calibrated(data.val.features, data.val.labels, model.interval_levels)
        lstm_seconds = time.perf_counter() - fit_started
        stats = statistical.run(
            data,
            settings.backtest.baselines,
            seasons=model.seasons,
            horizon=model.horizon,
            window=settings.backtest.baseline_window,
            levels=model.interval_levels,
            jobs=settings.backtest.baseline_jobs,
        )
        report = backtest.run(
            data,
            {"lstm": forecaster.predict},
            model.horizon,
            model.main_season,
            stats.predictions,
            fit_seconds=stats.seconds,
            failures=[str(f) for f in stats.failures],
            intervals={"lstm": forecaster.predict_intervals(data.test.features)[1], **stats.intervals},
        )
        drift.log_reference(project, data.train.features)  # what the stream monitor scores against
        base = training.Base.of(forecaster.cfg).describe()
        base_mae = float(np.mean(np.abs(forecaster.tensors(data.test.features)[2] - data.test.labels)))
        # tags, not metrics: every `<name>_mae` metric is a row of the backtest table
        mlflow.set_tags({"tsops.lstm_base": base, "tsops.lstm_base_mae": repr(base_mae)})
        for name, values in report.overall.items():
            mlflow.log_metrics({f"{name}_{metric}": v for metric, v in values.items()})
        mlflow.log_metrics(
            {
                "lstm_fit_seconds": lstm_seconds,
                "baselines_wall_seconds": stats.wall_seconds,
                **{f"{n}_fit_seconds": v for n, v in report.fit_seconds.items()},
            }
        )
        best, _ = report.best_baseline()
        mlflow.log_metric("lstm_vs_best_baseline", report.ratio_to_best_baseline("lstm"))
        spread = report.ratio_interval("lstm")
        if spread:
            low, high = spread
            mlflow.log_metrics({"lstm_vs_best_baseline_low": low, "lstm_vs_best_baseline_high": high})
        elif report.origins > 1:  # too few horizons of origins to resample: status says so
            mlflow.log_metric("backtest_stretches", report.stretches)
        for name, by_level in report.coverage.items():
            mlflow.log_metrics({f"{name}_coverage_{level}": v for level, v in by_level.items()})
        for level, (low, high) in report.coverage_interval.get("lstm", {}).items():
            mlflow.log_metrics({f"lstm_coverage_{level}_low": low, f"lstm_coverage_{level}_high": high})
        mlflow.set_tags({"tsops.best_baseline": best, "tsops.baseline_failures": str(len(report.failures))})
        for h, mae in enumerate(report.by_step["lstm"]["mae"], start=1):
            mlflow.log_metric("lstm_mae_by_step", float(mae), step=h)
        with registry.artifact_tmpdir() as tmp:
            folder = Path(tmp)
            table = report.table()
            table.columns = [f"{m}_{k}" for m, k in table.columns]
            table.to_csv(folder / "backtest.csv", index_label="step")
            backtest.plot(
                report,
                data,
                folder / "backtest.png",
                entity_col=series.entity_col,
                time_col=series.time,
                step=series.step,
            )
            (folder / "features.json").write_text(
                json.dumps(
                    {
                        "names": store.features.names,
                        "definition_hash": store.features.definition_hash(),
                        "settings": settings.features.model_dump(),
                    },
                    indent=1,
                )
            )
            if report.failures:
                (folder / "baseline_failures.txt").write_text("\n".join(report.failures) + "\n")
            mlflow.log_artifacts(str(folder), artifact_path="backtest")
            forecaster_dir = forecaster.save(folder / "forecaster")
            example = data.test.features[store.features.names].head(2).reset_index(drop=True)
            output = pd.DataFrame(forecaster.predict(example), columns=output_columns(model.horizon))
            info = artifact.log_model(project, forecaster_dir, example, output)
        version = int(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(model.name, str(version), key, value)
        client.set_model_version_tag(
            model.name, str(version), "tsops.backtest_mae", repr(report.overall["lstm"]["mae"])
        )
        client.set_model_version_tag(model.name, str(version), "tsops.best_baseline", best)
        client.set_model_version_tag(model.name, str(version), "tsops.lstm_base", base)
        client.set_model_version_tag(model.name, str(version), "tsops.lstm_base_mae", repr(base_mae))
        registry.set_challenger(client, model.name, version)
    return TrainOutcome(
        version,
        run.info.run_id,
        report,
        time.perf_counter() - started,
        result.epochs_run,
        data.left_out,
        lstm_seconds,
        base,
        base_mae,
        stats.wall_seconds,
        stats.processes,
    )
