"""Forecast accuracy per horizon step: MAE, RMSE and MASE.

MASE follows Hyndman & Koehler (2006): each error is divided by its own entity's in-sample
mean absolute seasonal difference at the main season (the in-sample seasonal naive's MAE), and
the scaled errors are averaged. Entities of different levels then weigh alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def seasonal_scales(values_by_entity: Mapping[str, np.ndarray], season: int) -> dict[str, float]:
    """MASE denominators per entity: the in-sample mean absolute seasonal difference. An entity
    too short for one season, or constant, gets the mean of the others' (1.0 if none has one)."""
    scales = {
        key: float(np.mean(np.abs(v[season:] - v[:-season])))
        for key, v in values_by_entity.items()
        if len(v) > season
    }
    usable = [s for s in scales.values() if s > 0 and np.isfinite(s)]
    fallback = float(np.mean(usable)) if usable else 1.0
    return {key: scales[key] if scales.get(key, 0.0) > 0 else fallback for key in values_by_entity}


def row_scales(entities: Sequence[str] | np.ndarray, scales: Mapping[str, float]) -> np.ndarray:
    """Each forecast row's MASE denominator, by its entity."""
    return np.array([scales[str(e)] for e in entities], dtype=float)


def per_step(y_true: np.ndarray, y_pred: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays of shape (H,): error of each horizon step over all forecast origins; `scale` is
    each row's MASE denominator (shape (rows,))."""
    err = y_pred - y_true
    mae = np.mean(np.abs(err), axis=0)
    mase = np.mean(np.abs(err) / np.asarray(scale, float)[:, None], axis=0)
    return {"mae": mae, "rmse": np.sqrt(np.mean(err**2, axis=0)), "mase": mase}


def overall(y_true: np.ndarray, y_pred: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    err = y_pred - y_true
    mae = float(np.mean(np.abs(err)))
    mase = float(np.mean(np.abs(err) / np.asarray(scale, float)[:, None]))
    return {"mae": mae, "rmse": float(np.sqrt(np.mean(err**2))), "mase": mase}


# Resampling the backtest's origins: how far the holdout's figures can be trusted. Forecasts from
# nearby origins share actuals and weather, so origins are resampled in blocks of consecutive
# origins (a moving-block bootstrap, Künsch 1989), all entities' n-th origins together.
DRAWS = 2000
LEVEL = 90.0
# Fewer disjoint blocks than this, and the draws barely differ from the holdout itself (origins
# over two years of weeks, forecasting a year ahead, span one): no interval is given then.
MIN_STRETCHES = 5


def origin_draws(
    times: np.ndarray, block: int, *, draws: int = DRAWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(which origin each row belongs to, shape (rows,); resampled origin indices, shape
    (draws, T)), for rows at origins `times` (any ordered key) in blocks of `block` of them."""
    unique, row_time = np.unique(times, return_inverse=True)
    count = len(unique)
    block = max(1, min(int(block), count))
    starts = np.random.default_rng(seed).integers(0, count - block + 1, size=(draws, -(-count // block)))
    picked = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(draws, -1)[:, :count]
    return row_time, picked


def resampled_share(
    numerator: np.ndarray, denominator: np.ndarray, row_time: np.ndarray, picked: np.ndarray
) -> np.ndarray:
    """Σ numerator / Σ denominator over each draw's origins (rows summed per origin time first):
    one figure per draw."""
    top, bottom = np.bincount(row_time, weights=numerator), np.bincount(row_time, weights=denominator)
    return top[picked].sum(axis=1) / bottom[picked].sum(axis=1)


def percentile_interval(figures: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level`% of the resampled figures."""
    tail = (100.0 - level) / 2
    low, high = np.nanpercentile(figures, [tail, 100.0 - tail])
    return float(low), float(high)
