"""Rolling-origin backtest on the held-out tail: the model against the naive baselines.

The model is trained once on data before the tail; every origin in the tail is then forecast
with the features known at that origin (a fixed-model rolling-origin evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tsops.models import metrics
from tsops.models.baselines import BASELINES
from tsops.models.dataset import TrainingData
from tsops.models.intervals import coverage as interval_coverage
from tsops.records import target_times

Predictor = Callable[[pd.DataFrame], np.ndarray]


@dataclass
class BacktestReport:
    overall: dict[str, dict[str, float]]  # model name -> {mae, rmse, mase}
    by_step: dict[str, dict[str, np.ndarray]]  # model name -> {mae, rmse, mase} arrays (H,)
    predictions: dict[str, np.ndarray]
    origins: int
    baselines: list[str] = field(default_factory=list)  # which of the models are baselines
    fit_seconds: dict[str, float] = field(default_factory=dict)  # statistical baselines' time
    failures: list[str] = field(default_factory=list)  # baseline fits that fell back, and why
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> level -> share

    def best_baseline(self) -> tuple[str, float]:
        """The baseline with the lowest MAE, and that MAE."""
        name = min(self.baselines, key=lambda n: self.overall[n]["mae"])
        return name, self.overall[name]["mae"]

    def ratio_to_best_baseline(self, model: str) -> float:
        """`model`'s MAE over the best baseline's (below 1: it beats every baseline)."""
        best = self.best_baseline()[1]
        return self.overall[model]["mae"] / best if best > 0 else float("inf")

    def table(self) -> pd.DataFrame:
        """One row per horizon step (and 'all'), one column per model and metric."""
        rows = {}
        for name, by_metric in self.by_step.items():
            for metric, values in by_metric.items():
                rows[(name, metric)] = [*values.tolist(), self.overall[name][metric]]
        horizon = len(next(iter(self.by_step.values()))["mae"])
        return pd.DataFrame(rows, index=[*range(1, horizon + 1), "all"])


def run(
    data: TrainingData,
    models: dict[str, Predictor],
    horizon: int,
    season: int,
    baselines: Mapping[str, np.ndarray] | None = None,
    *,
    fit_seconds: Mapping[str, float] | None = None,
    failures: list[str] | None = None,
    intervals: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None,
) -> BacktestReport:
    """Every model, the naive baselines at the main `season` and the given precomputed
    `baselines` (forecasts of the same test origins) on the test origins; MASE scales each row
    by its entity's in-sample seasonal naive MAE. `intervals` (model -> level -> lower, upper
    on the test rows) give each model's coverage of the actuals."""
    entity_col = data.history.columns[0]
    scales = metrics.seasonal_scales(data.train_history, season)
    scale = metrics.row_scales(data.test.features[entity_col].astype(str).to_numpy(), scales)
    truth = data.test.labels
    predictions = {name: predict(data.test.features) for name, predict in models.items()}
    for name, baseline in BASELINES.items():
        predictions[name] = baseline(data.test.features, horizon, season)
    predictions.update(baselines or {})
    return BacktestReport(
        overall={n: metrics.overall(truth, p, scale) for n, p in predictions.items()},
        by_step={n: metrics.per_step(truth, p, scale) for n, p in predictions.items()},
        predictions=predictions,
        origins=len(truth),
        baselines=[*BASELINES, *(baselines or {})],
        fit_seconds=dict(fit_seconds or {}),
        failures=list(failures or []),
        coverage={
            name: {level: interval_coverage(truth, lo, hi) for level, (lo, hi) in by_level.items()}
            for name, by_level in (intervals or {}).items()
            if by_level
        },
    )


def plot(
    report: BacktestReport,
    data: TrainingData,
    path: Path,
    *,
    entity_col: str,
    time_col: str,
    step: pd.Timedelta,
) -> Path:
    """PNG: MAE by horizon step for every model, and one entity's forecasts against actuals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, by_metric in report.by_step.items():
        ax1.plot(range(1, len(by_metric["mae"]) + 1), by_metric["mae"], marker=".", label=name)
    ax1.set(xlabel="horizon step", ylabel="MAE", title="Backtest MAE by horizon step")
    ax1.legend()
    feats = data.test.features
    first = feats[entity_col].iloc[0]
    horizon = data.test.labels.shape[1]
    for k, row in enumerate(np.flatnonzero((feats[entity_col] == first).to_numpy())[-4:]):
        origin = pd.Timestamp(feats[time_col].iloc[row])
        times = target_times([origin.to_datetime64()], step.value, horizon)[0]
        ax2.plot(
            times,
            data.test.labels[row],
            color="black",
            lw=1.2,
            label="actual" if k == 0 else None,
        )
        for i, (name, pred) in enumerate(report.predictions.items()):
            ax2.plot(
                times,
                pred[row],
                lw=1,
                alpha=0.8,
                color=f"C{i}",
                label=name if k == 0 else None,
            )
    ax2.set(title=f"Forecasts for {first} (last origins)")
    ax2.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
