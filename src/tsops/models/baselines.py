"""Naive forecasters every model must beat. Both read the feature window's lags (`lag_k`)."""

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


def level_adjusted_naive(
    features: pd.DataFrame, horizon: int, season: int, seasons: int = 1, steps: int = 1
) -> np.ndarray:
    """The seasonal naive moved by how far the last observation is from one season before it.
    With `seasons` K and `steps` k: the mean over j = 1..K of the profile j seasons back, each
    moved by the mean over the last k steps of y[t-i] - y[t-i-j·season]."""
    base = np.zeros((len(features), horizon))
    for j in range(1, seasons + 1):
        cols = [
            features[f"lag_{season * int(np.ceil(h / season)) + (j - 1) * season - h}"].to_numpy(dtype=float)
            for h in range(1, horizon + 1)
        ]
        shift = np.mean(
            [
                features[f"lag_{i}"].to_numpy(dtype=float)
                - features[f"lag_{i + j * season}"].to_numpy(dtype=float)
                for i in range(steps)
            ],
            axis=0,
        )
        base += np.stack(cols, axis=1) + shift[:, None]
    return base / seasons


BASELINES = {
    "persistence": lambda f, horizon, season: persistence(f, horizon),
    "seasonal_naive": seasonal_naive,
}
