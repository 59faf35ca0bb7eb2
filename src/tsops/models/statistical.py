"""The field's statistical baselines, from Nixtla's statsforecast (not reimplemented): AutoETS,
AutoTheta and MSTL, forecast at every backtest origin of every entity, each refit at that
origin on the latest `backtest.baseline_window` observations (what a forecaster would run in
production: a bounded window, refit as data arrives).

A fit that fails (a constant series, too few points, a numerical error) is reported with the
entity and the reason, and that origin falls back to the seasonal naive; it never stops the
training.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsops.models.baselines import seasonal_naive
from tsops.models.dataset import TrainingData, utc_ns
from tsops.models.intervals import label

STATISTICAL = ("autoets", "autotheta", "mstl")


def make_model(name: str, seasons: Sequence[float], length: int) -> Any:
    """The statsforecast model `name` for these seasons, fit on `length` observations."""
    from statsforecast.models import MSTL, AutoETS, AutoTheta

    main = max(1, round(seasons[0]))
    if name == "autoets":
        return AutoETS(season_length=main)
    if name == "autotheta":
        return AutoTheta(season_length=main)
    if name == "mstl":
        # MSTL needs two cycles of each season in its window; longer seasons are left out
        periods = sorted({round(s) for s in seasons if 1 < round(s) and 2 * round(s) < length})
        return MSTL(season_length=periods or [main])
    raise ValueError(f"unknown statistical baseline {name!r}; choose from {list(STATISTICAL)}")


@dataclass
class Failure:
    model: str
    entity: str
    origins: int  # origins of this entity whose fit failed (they use the seasonal naive)
    of: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.model} failed for entity {self.entity!r} at {self.origins} of {self.of} origins "
            f"({self.reason}); those use the seasonal naive"
        )


@dataclass
class StatisticalBacktest:
    predictions: dict[str, np.ndarray]  # model -> (test rows, horizon), aligned with data.test
    seconds: dict[str, float]  # model -> total fitting and forecasting time
    fits: dict[str, int]  # model -> fits made
    failures: list[Failure] = field(default_factory=list)
    # model -> level ("80") -> (lower, upper), statsforecast's own intervals; NaN where it failed
    intervals: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


def run(
    data: TrainingData,
    names: Sequence[str],
    *,
    seasons: Sequence[float],
    horizon: int,
    window: int,
    levels: Sequence[float] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> StatisticalBacktest:
    """Forecast every test origin of `data` with each model in `names`, refitting per origin;
    with `levels` (percent), also statsforecast's prediction intervals at those levels."""
    from statsforecast.models import MSTL  # noqa: F401  (import once, outside the timed loop)

    entity_col, time_col, target_col = data.history.columns[:3]
    features = data.test.features
    rows_by_entity = features.groupby(features[entity_col].astype(str), sort=False).indices
    naive = seasonal_naive(features, horizon, max(1, round(seasons[0])))
    out = StatisticalBacktest(
        predictions={n: np.full((len(features), horizon), np.nan) for n in names},
        seconds=dict.fromkeys(names, 0.0),
        fits=dict.fromkeys(names, 0),
        intervals={
            n: {
                label(lv): (
                    np.full((len(features), horizon), np.nan),
                    np.full((len(features), horizon), np.nan),
                )
                for lv in levels
            }
            for n in names
        },
    )
    origin_ns = utc_ns(features[time_col])
    done, total = 0, len(features) * len(names)
    for entity, group in data.history.groupby(data.history[entity_col].astype(str), sort=False):
        rows = rows_by_entity.get(str(entity))
        if rows is None:
            continue
        values = group[target_col].to_numpy(dtype=float)
        times = utc_ns(group[time_col])
        positions = np.minimum(np.searchsorted(times, origin_ns[rows]), len(times) - 1)
        if not np.array_equal(times[positions], origin_ns[rows]):
            raise ValueError(f"entity {entity!r}: a backtest origin is not in its history")
        for name in names:
            failed: list[str] = []
            started = time.perf_counter()
            for row, pos in zip(rows, positions, strict=True):
                y = values[max(0, pos + 1 - window) : pos + 1]
                try:
                    forecast, bounds = forecast_one(name, y, seasons=seasons, horizon=horizon, levels=levels)
                except Exception as e:  # statsforecast raises many types; the reason is reported
                    failed.append(f"{type(e).__name__}: {e}".strip()[:200])
                    forecast, bounds = naive[row], {}
                out.predictions[name][row] = forecast
                for key, (lo, hi) in bounds.items():
                    out.intervals[name][key][0][row] = lo
                    out.intervals[name][key][1][row] = hi
                out.fits[name] += 1
            out.seconds[name] += time.perf_counter() - started
            if failed:
                out.failures.append(Failure(name, str(entity), len(failed), len(rows), failed[0]))
            done += len(rows)
            if on_progress:
                on_progress(done, total)
    return out


def forecast_one(
    name: str, y: np.ndarray, *, seasons: Sequence[float], horizon: int, levels: Sequence[float] = ()
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """One fit of `name` on `y`: its `horizon`-step mean forecast (non-finite is a failure) and
    its intervals at `levels`."""
    if len(y) < 3:
        raise ValueError(f"{len(y)} observations")
    if np.ptp(y) == 0:
        raise ValueError("constant series")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(name, seasons, len(y))
        out = model.forecast(
            y=y, h=horizon, level=[int(lv) if lv == int(lv) else lv for lv in levels] or None
        )
    mean = np.asarray(out["mean"], float)
    if mean.shape != (horizon,) or not np.isfinite(mean).all():
        raise ValueError("non-finite forecast")
    bounds = {}
    for lv in levels:
        key = f"{int(lv) if lv == int(lv) else lv}"
        if f"lo-{key}" in out:
            bounds[label(lv)] = (np.asarray(out[f"lo-{key}"], float), np.asarray(out[f"hi-{key}"], float))
    return mean, bounds
