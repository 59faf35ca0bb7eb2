"""Rolling-origin backtest on the held-out tail: the model against the naive baselines.

The model is trained once on data before the tail; every origin in the tail is then forecast
with the features known at that origin (a fixed-model rolling-origin evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tsops.models import metrics
from tsops.models.baselines import BASELINES
from tsops.models.dataset import TrainingData
from tsops.models.intervals import coverage as interval_coverage
from tsops.records import target_times, utc_ns

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
    # the figures over resampled origins (metrics.origin_draws), so a reader sees what the
    # holdout can and cannot tell apart: the actuals, each row's origin time and the draws
    truth: np.ndarray | None = None
    draws: tuple[np.ndarray, np.ndarray] | None = None  # None: too few stretches to resample
    stretches: int = 0  # disjoint runs of the origins one horizon spans that the holdout holds
    coverage_interval: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # central 90%

    def best_baseline(self) -> tuple[str, float]:
        """The baseline with the lowest MAE, and that MAE."""
        name = min(self.baselines, key=lambda n: self.overall[n]["mae"])
        return name, self.overall[name]["mae"]

    def ratio_to_best_baseline(self, model: str) -> float:
        """`model`'s MAE over the best baseline's (below 1: it beats every baseline)."""
        best = self.best_baseline()[1]
        return self.overall[model]["mae"] / best if best > 0 else float("inf")

    def ratio_interval(self, model: str, reference: str | None = None) -> tuple[float, float] | None:
        """The central 90% of `model`'s MAE over `reference`'s (default: the best baseline's) on
        resampled origins; None where the holdout holds too few stretches to resample."""
        if self.truth is None or self.draws is None:
            return None
        reference = reference or self.best_baseline()[0]
        err = {n: np.abs(self.predictions[n] - self.truth).sum(axis=1) for n in (model, reference)}
        return metrics.percentile_interval(metrics.resampled_share(err[model], err[reference], *self.draws))

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
    report = BacktestReport(
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
    if len(truth):
        _resample(report, data, intervals or {})
    return report


def _resample(
    report: BacktestReport,
    data: TrainingData,
    intervals: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
) -> None:
    """Draw the report's resampled origins, in blocks of the origins one horizon spans (their
    forecasts share actuals), and each interval's coverage over them."""
    truth = data.test.labels
    times, block = _origin_times(data, truth.shape[1])
    report.stretches = len(np.unique(times)) // block
    if report.stretches < metrics.MIN_STRETCHES:  # one horizon spans most of the holdout
        return
    row_time, picked = report.draws = metrics.origin_draws(times, block)
    report.truth = truth
    for name, by_level in intervals.items():
        for level, (lo, hi) in by_level.items():
            finite = np.isfinite(lo) & np.isfinite(hi)
            inside = (truth >= lo) & (truth <= hi) & finite
            report.coverage_interval.setdefault(name, {})[level] = metrics.percentile_interval(
                metrics.resampled_share(inside.sum(axis=1), finite.sum(axis=1), row_time, picked)
            )


def _origin_times(data: TrainingData, horizon: int) -> tuple[np.ndarray, int]:
    """Each test row's origin: its rank among its entity's origins (entities in other time zones
    or with other calendars are resampled rank by rank), and how many consecutive origins one
    horizon spans."""
    entity_col, time_col = data.history.columns[:2]
    rows = pd.DataFrame(
        {
            "entity": data.test.features[entity_col].astype(str).to_numpy(),
            "t": utc_ns(data.test.features[time_col]),
        }
    )
    rank = rows.groupby("entity")["t"].rank(method="dense").to_numpy(dtype=np.int64) - 1
    gaps = rows.sort_values(["entity", "t"]).groupby("entity")["t"].diff().dropna().to_numpy()
    if not len(gaps) or not (gaps > 0).any():
        return rank, 1
    one = data.history[data.history[entity_col] == data.history[entity_col].iloc[0]]
    steps = np.diff(utc_ns(one[time_col]))
    step = int(steps[steps > 0].min()) if (steps > 0).any() else 1
    return rank, max(1, math.ceil(horizon * step / float(np.median(gaps[gaps > 0]))))


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
