"""Forecast accuracy per horizon step: MAE, RMSE and MASE."""

from __future__ import annotations

import numpy as np


def seasonal_scale(values_by_entity: list[np.ndarray], season: int) -> float:
    """MASE denominator: in-sample mean absolute seasonal difference, pooled over entities."""
    diffs = [np.abs(v[season:] - v[:-season]) for v in values_by_entity if len(v) > season]
    pooled = np.concatenate(diffs) if diffs else np.array([])
    scale = float(np.mean(pooled)) if pooled.size else 0.0
    return scale if scale > 0 else 1.0


def per_step(y_true: np.ndarray, y_pred: np.ndarray, scale: float) -> dict[str, np.ndarray]:
    """Arrays of shape (H,): error of each horizon step over all forecast origins."""
    err = y_pred - y_true
    mae = np.mean(np.abs(err), axis=0)
    return {"mae": mae, "rmse": np.sqrt(np.mean(err**2, axis=0)), "mase": mae / scale}


def overall(y_true: np.ndarray, y_pred: np.ndarray, scale: float) -> dict[str, float]:
    err = y_pred - y_true
    mae = float(np.mean(np.abs(err)))
    return {"mae": mae, "rmse": float(np.sqrt(np.mean(err**2))), "mase": mae / scale}
