"""The two engines over one `FeatureSet`: vectorised over history, and incremental per event."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tsops.features.definitions import EntityState, FeatureSet


def batch_features(
    history: pd.DataFrame, fs: FeatureSet, *, entity: str, time: str, target: str
) -> pd.DataFrame:
    """Features for every row of a regular long history (sorted by entity, time).

    Rows whose lookback is not yet filled carry NaN, exactly as the incremental engine does.
    """
    parts = []
    for key, group in history.groupby(entity, sort=False):
        values = group[target].to_numpy(dtype=float)
        times = pd.DatetimeIndex(group[time])
        cols: dict[str, np.ndarray] = {}
        for feature in fs.features:
            cols.update(feature.batch(values, times))
        frame = pd.DataFrame(cols, index=group.index)[fs.names]
        frame.insert(0, target, values)
        frame.insert(0, time, times)
        frame.insert(0, entity, key)
        parts.append(frame)
    if not parts:
        return pd.DataFrame(columns=[entity, time, target, *fs.names])
    return pd.concat(parts).reset_index(drop=True)


def future_targets(history: pd.DataFrame, horizon: int, *, entity: str, target: str) -> pd.DataFrame:
    """Labels for each row: the next `horizon` observations (`y_1`..`y_H`), NaN past the end."""
    grouped = history.groupby(entity, sort=False)[target]
    return pd.DataFrame({f"y_{h}": grouped.shift(-h) for h in range(1, horizon + 1)})


def update(fs: FeatureSet, state: EntityState, time: pd.Timestamp, value: float) -> dict[str, float]:
    """Apply one observation to the entity's state and return its features."""
    state.push(time, value)
    out: dict[str, float] = {}
    for feature in fs.features:
        out.update(feature.incremental(state))
    return out


def features_after(fs: FeatureSet, prior: np.ndarray, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Features of new observations appended to an entity's lookback `prior` (oldest first),
    computed by the batch definitions in one vectorised pass: the stream engine's micro-batch
    path, equal to calling `update` once per observation. Returns (len(values), len(fs.names))."""
    full = np.concatenate([prior, values])
    # Only the new rows are returned, and a row's calendar terms read its own time alone, so the
    # prior rows' times can be anything.
    all_times = pd.DatetimeIndex(np.concatenate([np.repeat(times[:1], len(prior)), times]))
    cols: dict[str, np.ndarray] = {}
    for feature in fs.features:
        cols.update(feature.batch(full, all_times))
    return np.column_stack([cols[n][len(prior) :] for n in fs.names])
