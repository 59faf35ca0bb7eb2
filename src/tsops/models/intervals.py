"""Prediction intervals per horizon step, by split conformal prediction.

Calibration: on the validation origins (never trained on; they only pick the epoch) the score
of each forecast step is |actual - forecast| divided by the row's local scale, the mean
absolute seasonal difference over the features' whole window (even where the network reads
less of it: model.input_window). The interval at level L for step h is forecast ± q_h(L) ·
scale, q_h(L) the ⌈(n+1)·L⌉/n empirical quantile of step h's scores.
Scaling by the window makes one calibration serve entities of different levels and spreads
(and calm and volatile stretches of one entity); coverage is then measured on the holdout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FLOOR_SHARE = 0.1  # a flat window's scale is at least this share of the calibration's median


def local_scale(window: np.ndarray, season: int) -> np.ndarray:
    """Per row of `window` (newest first, shape (rows, W)): mean |y_t - y_{t-season}| over the
    window, or of first differences when the window holds less than two seasons."""
    lag = season if window.shape[1] > season else 1
    return np.mean(np.abs(window[:, :-lag] - window[:, lag:]), axis=1)


def calibrate(scores: np.ndarray, levels: Sequence[float]) -> list[list[float]]:
    """Conformal quantiles, one list per level (percent), one value per horizon step."""
    n = scores.shape[0]
    if n == 0:
        raise ValueError("no calibration rows")
    out = []
    for level in levels:
        q = min(1.0, math.ceil((n + 1) * level / 100.0) / n)
        out.append(np.quantile(scores, q, axis=0, method="higher").astype(float).tolist())
    return out


def bounds(
    yhat: np.ndarray,
    scale: np.ndarray,
    levels: Sequence[float],
    quantiles: Sequence[Sequence[float]],
    floor: float,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Lower and upper bounds (each (rows, H)) per level, keyed by the level's label ("80")."""
    width_unit = np.maximum(scale, floor)[:, None]
    out = {}
    for level, q in zip(levels, quantiles, strict=True):
        half = width_unit * np.asarray(q, float)[None, :]
        out[label(level)] = (yhat - half, yhat + half)
    return out


def coverage(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of actuals inside [lower, upper] (finite bounds only)."""
    ok = np.isfinite(lower) & np.isfinite(upper)
    inside = (truth >= lower) & (truth <= upper)
    return float(inside[ok].mean()) if ok.any() else float("nan")


def label(level: float) -> str:
    return f"{level:g}"
