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
