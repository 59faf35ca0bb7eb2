"""Training and backtest examples: forecast origins, their point-in-time features from Feast,
and their labels (the next H observations).

Split per entity by time: the last `backtest.holdout` steps are the held-out tail. Backtest
origins sit in front of and inside the tail every `backtest.stride` steps; training origins
only where every label lies before the tail starts, so nothing from the tail leaks into
training. The last `backtest.validation` share of training origins is used for early stopping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tsops.errors import DataError
from tsops.features.engines import future_targets
from tsops.features.store import FeatureStoreClient


@dataclass
class Examples:
    features: pd.DataFrame  # entity, time, feature columns
    labels: np.ndarray  # (rows, horizon)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> Examples:
        return Examples(self.features[mask].reset_index(drop=True), self.labels[mask])


@dataclass
class TrainingData:
    train: Examples
    val: Examples
    test: Examples
    train_history: dict[str, np.ndarray]  # per entity target values before the tail (MASE scale)
    history: pd.DataFrame  # the regular series (entity, time, target), sorted: baselines refit on it
    test_window: tuple[pd.Timestamp, pd.Timestamp]  # first and last forecast origin
    data_hash: str
    left_out: dict[str, str] = field(default_factory=dict)  # entity → why it was left out


def data_snapshot_hash(history: pd.DataFrame) -> str:
    digest = hashlib.sha256(pd.util.hash_pandas_object(history, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def leave_out_short_entities(
    history: pd.DataFrame, *, entity: str, horizon: int, lookback: int, holdout: int
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The history of the entities with enough steps to train and backtest on, and the others
    with the reason. One mistyped entity in a stream (a one-observation series) must not stop
    training for all; only when no entity has enough history is it an error."""
    need = holdout + horizon + lookback + 10
    sizes = history.groupby(entity, sort=False).size()
    short = sizes[sizes < need]
    left_out = {
        str(e): f"{n} steps, needs at least {need} (window/lags {lookback} + horizon {horizon} "
        f"+ backtest.holdout {holdout} + 10)"
        for e, n in short.items()
    }
    if len(short) == len(sizes):
        first = next(iter(left_out.items()), ("-", "no history"))
        raise DataError(
            f"no entity has enough history to train on ({len(sizes)} entit(y/ies)); e.g. "
            f"{first[0]!r}: {first[1]}. Lower backtest.holdout or load more history",
            "backtest.holdout",
        )
    if not left_out:
        return history, {}
    kept = history[~history[entity].isin(short.index)].reset_index(drop=True)
    return kept, left_out


def select_origins(
    history: pd.DataFrame,
    *,
    entity: str,
    horizon: int,
    lookback: int,
    holdout: int,
    stride: int,
    validation: float,
) -> pd.Series:
    """Label each history row 'train', 'val', 'test' or '' (not an origin)."""
    role = pd.Series("", index=history.index, dtype=object)
    for _, group in history.groupby(entity, sort=False):
        n = len(group)
        tail_start = n - holdout
        if tail_start - horizon - lookback < 10:
            raise DataError(
                f"entity {group[entity].iloc[0]!r} has {n} steps: too short for window/lags "
                f"({lookback}), horizon ({horizon}) and backtest.holdout ({holdout})",
                "backtest.holdout",
            )
        idx = group.index.to_numpy()
        train_pos = np.arange(lookback - 1, tail_start - horizon)
        n_val = max(1, int(len(train_pos) * validation))
        role.loc[idx[train_pos[:-n_val]]] = "train"
        role.loc[idx[train_pos[-n_val:]]] = "val"
        test_pos = np.arange(tail_start - 1, n - horizon, stride)
        role.loc[idx[test_pos]] = "test"
    return role


def build(client: FeatureStoreClient, horizon: int, *, window: int | None = None) -> TrainingData:
    """Assemble examples with features from Feast's point-in-time join; with `window`, from
    the latest `window` steps per entity only (features still see the history before it)."""
    settings = client.project.settings
    series = settings.series
    ent, time, target = series.entity_col, series.time, series.target
    client.require_ingested()
    client.compact_offline()  # observations the stream appended since the last training
    history = client.read_offline()[[ent, time, target]].sort_values([ent, time]).reset_index(drop=True)
    if window is not None:
        history = history.groupby(ent, sort=False).tail(window).reset_index(drop=True)
    history, left_out = leave_out_short_entities(
        history,
        entity=ent,
        horizon=horizon,
        lookback=client.features.lookback,
        holdout=settings.backtest.holdout,
    )
    labels = future_targets(history, horizon, entity=ent, target=target).to_numpy()
    role = select_origins(
        history,
        entity=ent,
        horizon=horizon,
        lookback=client.features.lookback,
        holdout=settings.backtest.holdout,
        stride=settings.backtest.stride,
        validation=settings.backtest.validation,
    )
    origins = history[role != ""]
    features = client.historical(origins[[ent, time]])
    examples = Examples(features, labels[(role != "").to_numpy()])
    roles = role[role != ""].to_numpy()
    poisoned = leave_out_non_finite(examples, client.features.names, ent, time, target)
    if poisoned:
        if len(poisoned) == history[ent].nunique():
            first = next(iter(poisoned.items()))
            raise DataError(
                f"no entity has usable history: every one has non-finite examples, e.g. {first[0]!r}: "
                f"{first[1]}",
                "offline store",
            )
        keep = ~examples.features[ent].astype(str).isin(poisoned).to_numpy()
        examples, roles = examples.subset(keep), roles[keep]
        history = history[~history[ent].astype(str).isin(poisoned)].reset_index(drop=True)
        left_out = {**left_out, **poisoned}
    test = examples.subset(roles == "test")
    train_history = {
        str(key): g[target].to_numpy()[: len(g) - settings.backtest.holdout]
        for key, g in history.groupby(ent)
    }
    return TrainingData(
        train=examples.subset(roles == "train"),
        val=examples.subset(roles == "val"),
        test=test,
        train_history=train_history,
        history=history,
        test_window=(test.features[time].min(), test.features[time].max()),
        data_hash=data_snapshot_hash(history),
        left_out=left_out,
    )


def leave_out_non_finite(
    examples: Examples, names: list[str], ent: str, time: str, target: str
) -> dict[str, str]:
    """Entities with a non-finite feature or label (an absurd value overflowing a rolling
    statistic, a NaN written to the offline store), with the reason: they would poison training
    or the backtest, so they are left out (and reported) instead of stopping training for all."""
    finite = np.isfinite(examples.features[names].to_numpy(float)).all(axis=1)
    finite &= np.isfinite(examples.labels).all(axis=1)
    if finite.all():
        return {}
    bad = examples.features.loc[~finite, [ent, time]]
    out = {}
    for entity, group in bad.groupby(ent, sort=True):
        out[str(entity)] = (
            f"{len(group)} example(s) with non-finite features or labels, the first at "
            f"{group.iloc[0, 1]}: check its {target} values there, or tsops entities drop it"
        )
    return out
