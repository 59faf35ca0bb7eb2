"""Drift: the population stability index (PSI) of the target and the monitored features over
the last `monitoring.drift_window` observations, against the training reference logged with
the model.

The reference is computed at training time from the training rows: for every feature (and
the target, which is the current observation `lag_0`) the inner edges of `monitoring.drift_bins`
quantile bins and the share of training rows in each bin. It is logged as the MLflow artifact
`drift/reference.json` of the training run, so every registered version carries its own.

PSI = Σ_bins (q − p) · ln(q / p), p the reference share and q the window's share of a bin
(both floored at 1e-4 so an empty bin stays finite). Rules of thumb: below 0.1 no shift,
0.1–0.25 moderate, above 0.25 large. With n observations and k bins an undrifted window still
scores about (k − 1)/n by sampling noise alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tsops.errors import ConfigError
from tsops.features.definitions import FeatureSet
from tsops.settings import Project

log = logging.getLogger(__name__)

ARTIFACT = "drift/reference.json"
FLOOR = 1e-4
TARGET_SOURCE = "lag_0"  # in a feature row, the current observation is the target


@dataclass(frozen=True)
class ColumnReference:
    edges: np.ndarray  # inner bin edges, ascending; bin i holds edges[i-1] <= x < edges[i]
    expected: np.ndarray  # share of reference rows per bin (len(edges) + 1)

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        bins = np.searchsorted(self.edges, values, side="right")
        return np.bincount(bins, minlength=len(self.edges) + 1)


@dataclass(frozen=True)
class DriftReference:
    columns: dict[str, ColumnReference]
    rows: int
    version: int | None = None  # the model version it belongs to, once known
    span: tuple[str, str] | None = None  # first and last time of the reference rows (ISO)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, columns: list[str], bins: int) -> DriftReference:
        """Quantile bins of each column of `frame` (non-finite values ignored)."""
        out = {}
        for name in columns:
            values = frame[name].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                continue
            edges = np.unique(np.quantile(values, np.arange(1, bins) / bins))
            if len(edges) == 1:  # constant column: separate values below, at and above it
                edges = np.array([edges[0], np.nextafter(edges[0], np.inf)])
            counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
            out[name] = ColumnReference(edges, counts / counts.sum())
        return cls(out, len(frame))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "span": None if self.span is None else list(self.span),
            "columns": {
                n: {"edges": c.edges.tolist(), "expected": c.expected.tolist()}
                for n, c in self.columns.items()
            },
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], version: int | None = None) -> DriftReference:
        columns = {
            n: ColumnReference(np.asarray(c["edges"], float), np.asarray(c["expected"], float))
            for n, c in raw["columns"].items()
        }
        span = raw.get("span")
        return cls(columns, int(raw["rows"]), version, None if span is None else (str(span[0]), str(span[1])))


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """Population stability index of observed bin `counts` against `expected` shares."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = np.maximum(expected, FLOOR)
    q = np.maximum(counts / total, FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def training_reference(project: Project, train_features: pd.DataFrame) -> DriftReference:
    """The reference of a training: every feature and the target (the current observation)."""
    names = FeatureSet(project.settings.features).names
    frame = train_features[names].copy()
    frame[project.settings.series.target] = train_features[TARGET_SOURCE]
    ref = DriftReference.from_frame(
        frame, [project.settings.series.target, *names], project.settings.monitoring.drift_bins
    )
    times = pd.to_datetime(train_features[project.settings.series.time])
    return DriftReference(ref.columns, ref.rows, None, (times.min().isoformat(), times.max().isoformat()))


def log_reference(project: Project, train_features: pd.DataFrame) -> None:
    """Log the training reference into the active MLflow run (called by `tsops train`)."""
    import mlflow

    mlflow.log_dict(training_reference(project, train_features).to_dict(), ARTIFACT)


def load_reference(project: Project, version: int) -> DriftReference | None:
    """The reference logged with a registered version; None (and a warning) if it has none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tsops import registry

    client = registry.connect(project)
    try:
        run_id = client.get_model_version(project.settings.model.name, str(version)).run_id
        raw = mlflow.artifacts.load_dict(f"runs:/{run_id}/{ARTIFACT}")
    except (MlflowException, OSError, json.JSONDecodeError) as e:
        log.warning("drift: version %s has no training reference (%s); drift is not scored", version, e)
        return None
    return DriftReference.from_dict(raw, version)


def monitored_columns(project: Project) -> list[str]:
    """The target, then `monitoring.drift_features` (default: every feature except the lags,
    which repeat the target, but for those a whole season back, and calendar terms, which a
    short window cannot match)."""
    features = FeatureSet(project.settings.features)
    chosen = project.settings.monitoring.drift_features
    if chosen is None:
        seasons = {f"lag_{round(s)}" for s in project.settings.model.seasons}
        chosen = [
            n
            for n in features.context_names
            if not n.endswith(("_sin", "_cos")) and (not n.startswith("lag_") or n in seasons)
        ]
    unknown = [n for n in chosen if n not in features.names]
    if unknown:
        raise ConfigError(
            f"unknown feature(s) {unknown}; features are {features.names}", "monitoring.drift_features"
        )
    return [project.settings.series.target, *dict.fromkeys(chosen)]


class DriftWindow:
    """The last `window` finite values of each monitored column, scored against a reference."""

    def __init__(self, columns: list[str], window: int):
        self.columns = columns
        self.window = window
        self.values = {c: np.zeros(window) for c in columns}
        self.count = dict.fromkeys(columns, 0)
        self.position = dict.fromkeys(columns, 0)

    def add(self, column: str, values: np.ndarray) -> None:
        new = values[np.isfinite(values)][-self.window :]
        if len(new) == 0:
            return
        slots = (self.position[column] + np.arange(len(new))) % self.window
        self.values[column][slots] = new
        self.position[column] = (self.position[column] + len(new)) % self.window
        self.count[column] = min(self.window, self.count[column] + len(new))

    def recent(self, column: str) -> np.ndarray:
        return self.values[column][: self.count[column]]

    def scores(self, reference: DriftReference) -> dict[str, tuple[float, int]]:
        """PSI and window size per column that the reference covers and the window holds."""
        out = {}
        for column in self.columns:
            ref = reference.columns.get(column)
            n = self.count[column]
            if ref is None or n == 0:
                continue
            out[column] = (psi(ref.expected, ref.bin_counts(self.recent(column))), n)
        return out
