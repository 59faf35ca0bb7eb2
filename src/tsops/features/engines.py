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


def features_after_many(
    fs: FeatureSet, blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> list[np.ndarray]:
    """Features of new observations appended to entities' lookbacks: one (prior, times, values)
    block per entity, `prior` the values it had before (oldest first); the stream engine's
    micro-batch path, equal to calling `update` once per observation. The lookback window of
    every new row (the entity's prior values, then the block's, NaN where it has fewer) is
    gathered into one (rows, lookback) matrix and each definition applied once (`Feature.at`):
    one pass per micro-batch, not per entity, and no work on rows that are not new. Returns
    one (len(values), len(fs.names)) matrix per block."""
    if not blocks:
        return []
    width = fs.lookback
    sizes = [len(values) for _, _, values in blocks]
    parts: list[np.ndarray] = []
    rows: list[np.ndarray] = []  # where each new row ends in the laid-out values
    at = 0
    for prior, _, values in blocks:
        kept = prior[len(prior) - (width - 1) :] if len(prior) >= width else prior
        lead = width - 1 - len(kept)
        parts += [np.full(lead, np.nan), kept, values]
        start = at + width - 1
        rows.append(np.arange(start, start + len(values)))
        at = start + len(values)
    laid_out = np.concatenate(parts)
    ends = np.concatenate(rows)
    windows = laid_out[ends[:, None] + np.arange(1 - width, 1)[None, :]]
    times = pd.DatetimeIndex(np.concatenate([t for _, t, _ in blocks]).astype("datetime64[ns]"))
    cols: dict[str, np.ndarray] = {}
    for feature in fs.features:
        cols.update(feature.at(windows, times))
    matrix = np.column_stack([cols[n] for n in fs.names])
    return np.split(matrix, np.cumsum(sizes)[:-1])
