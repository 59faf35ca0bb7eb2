"""Naive forecasters every model must beat. Both read the model's input window (`lag_k`)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def persistence(features: pd.DataFrame, horizon: int) -> np.ndarray:
    """Every step of the horizon repeats the last observation."""
    last = features["lag_0"].to_numpy(dtype=float)
    return np.repeat(last[:, None], horizon, axis=1)


def seasonal_naive(features: pd.DataFrame, horizon: int, season: int) -> np.ndarray:
    """Step h repeats the observation one season earlier: y[t+h-season·ceil(h/season)]."""
    cols = []
    for h in range(1, horizon + 1):
        back = season * int(np.ceil(h / season)) - h  # lag index of y[t+h-k·season]
        cols.append(features[f"lag_{back}"].to_numpy(dtype=float))
    return np.stack(cols, axis=1)


def level_adjusted_naive(features: pd.DataFrame, horizon: int, season: int) -> np.ndarray:
    """The seasonal naive moved by how far the last observation is from one season before it."""
    shift = features["lag_0"].to_numpy(dtype=float) - features[f"lag_{season}"].to_numpy(dtype=float)
    return seasonal_naive(features, horizon, season) + shift[:, None]


BASELINES = {
    "persistence": lambda f, horizon, season: persistence(f, horizon),
    "seasonal_naive": seasonal_naive,
}
