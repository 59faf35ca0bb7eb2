"""`StreamMonitor`: the one object a stream worker calls per micro-batch. It joins forecasts
with actuals (online accuracy and interval coverage), scores drift against the serving
model's training reference, exports both as Prometheus metrics, and stores periodic snapshots
in the history tables.

Thread-safe: the stream thread calls `on_batch`, a dashboard or retrainer thread `snapshot`.
A failure inside the monitor is logged and never stops the stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from tsops.monitoring import drift
from tsops.monitoring.accuracy import AccuracyTracker
from tsops.monitoring.drift import DriftReference, DriftWindow
from tsops.monitoring.history import ALL_STEPS, AccuracyRow, CoverageRow, DriftRow, MonitorHistory
from tsops.monitoring.metrics import MonitorMetrics
from tsops.records import Event, Prediction
from tsops.settings import Project

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0
# Gauges (online MAE per step, drift scores) are recomputed at most this often, and whenever
# figures are read (`snapshot`, `persist`): a micro-batch only accumulates. Scoring every
# feature's drift per micro-batch cost a stream worker ~5 ms per poll.
REFRESH_EVERY_S = 0.5


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class StreamMonitor:
    """Online accuracy and drift of a stream, per micro-batch.

    `registry`: a Prometheus registry to add the metrics to (default: an own one, `.metrics.registry`).
    `history`: where snapshots go (default: the project's monitoring database); `persist=False`
    keeps everything in memory. `reference_version`: score drift against this version's
    training reference from the start (default: the version of the first forecasts); the
    reference then follows the version of the latest forecasts. `reference_loader(version)`
    returns a version's reference (default: the MLflow artifact logged at training).
    """

    def __init__(
        self,
        project: Project,
        *,
        registry: CollectorRegistry | None = None,
        history: MonitorHistory | None = None,
        persist: bool = True,
        reference_version: int | None = None,
        reference_loader: Callable[[int], DriftReference | None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ):
        settings = project.settings
        self.project = project
        self.settings = settings.monitoring
        self.target = settings.series.target
        self.accuracy = AccuracyTracker(
            settings.model.horizon,
            settings.series.step,
            self.settings.accuracy_window,
            settings.model.interval_levels,
        )
        self.columns = drift.monitored_columns(project)
        self.features = self.columns[1:]
        self.window = DriftWindow(self.columns, self.settings.drift_window)
        self.metrics = MonitorMetrics(registry)
        self.history = (
            history if history is not None else (MonitorHistory.for_project(project) if persist else None)
        )
        self._load_reference = reference_loader or (lambda v: drift.load_reference(project, v))
        self._references: dict[int, DriftReference | None] = {}
        self.reference: DriftReference | None = None
        self.drift_scores: dict[str, tuple[float, int]] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._changed_versions: set[int] = set()
        self._drift_changed = False
        self._last_persist = -float("inf")
        self._last_refresh = -float("inf")
        self._stale_versions: set[int] = set()  # versions whose MAE gauges are behind
        self._window_stale = False  # drift scores are behind the window
        self._reported_joined: dict[int, int] = {}
        self._last_prune = -float("inf")
        if reference_version is not None:
            self._use_reference(reference_version)
        self.batches = 0
        self.errors = 0  # failures inside the monitor (logged)
        self.persist_errors = 0

    # -- the stream's call ----------------------------------------------------------------

    def on_batch(
        self,
        events: list[Event],
        feature_rows: pd.DataFrame | list[dict[str, float]],
        predictions: list[Prediction],
    ) -> None:
        """Account one micro-batch: its applied events (the actuals, and the target's values),
        their feature rows (a frame with the feature columns, as the stream has them, or a list
        of row dicts), and the prediction records written for it."""
        with self._lock:
            try:
                self._on_batch(events, feature_rows, predictions)
            except Exception:
                self.errors += 1
                log.exception("monitor: a micro-batch could not be accounted; the stream goes on")
                return
        if time.monotonic() - self._last_persist >= self.settings.snapshot_interval_s:
            self.persist()

    def _on_batch(
        self,
        events: list[Event],
        feature_rows: pd.DataFrame | list[dict[str, float]],
        predictions: list[Prediction],
    ) -> None:
        acc, m = self.accuracy, self.metrics
        before = acc.counts.as_dict()
        serving = acc.add_forecasts(predictions)
        updated = acc.add_actuals(events)
        self._changed_versions |= updated
        self._stale_versions |= updated
        after = acc.counts.as_dict()
        m.actuals.inc(after["actuals"] - before["actuals"])
        for reason, n in after["unmatched"].items():
            if n > before["unmatched"][reason]:
                m.unmatched.labels(reason).inc(n - before["unmatched"][reason])
        m.expired.inc(after["expired_steps"] - before["expired_steps"])
        m.invalid.inc(after["invalid_forecasts"] - before["invalid_forecasts"])
        m.pending.set(acc.pending_count)

        if events:
            self.window.add(self.target, np.fromiter((e.value for e in events), float, len(events)))
        if isinstance(feature_rows, pd.DataFrame):
            n = len(feature_rows)
            for name in self.features if n else ():
                present = name in feature_rows.columns
                self.window.add(name, feature_rows[name].to_numpy(float) if present else np.full(n, np.nan))
        elif feature_rows:
            for name in self.features:
                column = np.fromiter((r.get(name, np.nan) for r in feature_rows), float, len(feature_rows))
                self.window.add(name, column)
        if serving is not None:
            self._use_reference(serving)
        self._window_stale |= bool(events or len(feature_rows) or predictions)
        self.batches += 1
        if time.monotonic() - self._last_refresh >= REFRESH_EVERY_S:
            self._refresh()

    def refresh(self) -> None:
        """Bring the gauges up to date now (the stream calls it when a poll comes back empty,
        so figures accumulated in the last `REFRESH_EVERY_S` are not left behind when it idles)."""
        with self._lock:
            if self._stale_versions or self._window_stale:
                self._refresh()

    def _refresh(self) -> None:
        """Bring the gauges and the drift scores up to what was accumulated (under the lock)."""
        self._last_refresh = time.monotonic()
        m = self.metrics
        for figure in self.accuracy.figures():
            version = figure["model_version"]
            if version not in self._stale_versions:
                continue
            label = str(version)
            m.joined.labels(label).inc(figure["errors_total"] - self._reported_joined.get(version, 0))
            self._reported_joined[version] = figure["errors_total"]
            m.mae.labels(label, "all").set(_or_nan(figure["mae"]))
            m.mae_samples.labels(label, "all").set(figure["n"])
            for h, (mae, n) in enumerate(zip(figure["mae_by_step"], figure["n_by_step"], strict=True), 1):
                m.mae.labels(label, str(h)).set(_or_nan(mae))
                m.mae_samples.labels(label, str(h)).set(n)
            for level, cov in figure["coverage"].items():
                m.coverage.labels(label, level, "all").set(_or_nan(cov["value"]))
                m.coverage_samples.labels(label, level, "all").set(cov["n"])
                for h, (share, n) in enumerate(zip(cov["by_step"], cov["n_by_step"], strict=True), 1):
                    m.coverage.labels(label, level, str(h)).set(_or_nan(share))
                    m.coverage_samples.labels(label, level, str(h)).set(n)
        self._stale_versions.clear()
        if self.reference is not None and self._window_stale:
            self.drift_scores = self.window.scores(self.reference)
            self._drift_changed = True
            for name, (score, _) in self.drift_scores.items():
                m.drift.labels(name).set(score)
            if self.drift_scores:
                m.drift_max.set(max(s for s, _ in self.drift_scores.values()))
        self._window_stale = False
        m.drift_rows.set(self.window.count[self.target])

    def _use_reference(self, version: int) -> None:
        if self.reference is not None and self.reference.version == version:
            return
        if version not in self._references:
            self._references[version] = self._load_reference(version)
        ref = self._references[version]
        if ref is not None:
            self.reference = DriftReference(ref.columns, ref.rows, version, ref.span)
            self.metrics.drift_reference.set(version)

    # -- figures --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Current figures as one JSON-able dict (see docs/monitoring.md for the fields)."""
        with self._lock:
            self._refresh()
            acc = self.accuracy
            scores = dict(self.drift_scores)
            top = max(scores.items(), key=lambda kv: kv[1][0]) if scores else None
            latest = acc.latest_event_time
            return {
                "at": self._clock().isoformat(),
                "event_time": None if latest is None else pd.Timestamp(latest).isoformat(),
                "accuracy": acc.figures(),
                "drift": {
                    "reference_version": None if self.reference is None else self.reference.version,
                    "window": self.settings.drift_window,
                    "scores": {n: {"score": s, "n": c} for n, (s, c) in scores.items()},
                    "max": None if top is None else top[1][0],
                    "max_feature": None if top is None else top[0],
                    "rows": self.window.count[self.target],
                },
                "counts": {
                    **acc.counts.as_dict(),
                    "pending_forecasts": acc.pending_count,
                    "batches": self.batches,
                    "monitor_errors": self.errors,
                },
            }

    def persist(self) -> int:
        """Store the current figures in the history now; returns the rows written. Versions
        without new errors since the last call are not repeated. A database failure is logged."""
        if self.history is None:
            return 0
        with self._lock:
            self._refresh()
            now = self._clock()
            latest = self.accuracy.latest_event_time
            event_time = None if latest is None else pd.Timestamp(latest).to_pydatetime()
            accuracy: list[AccuracyRow] = []
            coverage: list[CoverageRow] = []
            for f in self.accuracy.figures():
                if f["model_version"] not in self._changed_versions or f["mae"] is None:
                    continue
                version = f["model_version"]
                accuracy.append(AccuracyRow(now, event_time, version, ALL_STEPS, f["mae"], f["n"]))
                for h, (mae, n) in enumerate(zip(f["mae_by_step"], f["n_by_step"], strict=True), 1):
                    if mae is not None:
                        accuracy.append(AccuracyRow(now, event_time, version, h, mae, n))
                for level, cov in f["coverage"].items():
                    if cov["value"] is None:
                        continue
                    coverage.append(
                        CoverageRow(now, event_time, version, level, ALL_STEPS, cov["value"], cov["n"])
                    )
                    for h, (share, n) in enumerate(zip(cov["by_step"], cov["n_by_step"], strict=True), 1):
                        if share is not None:
                            coverage.append(CoverageRow(now, event_time, version, level, h, share, n))
            drift_rows: list[DriftRow] = []
            if self._drift_changed and self.reference is not None and self.reference.version is not None:
                drift_rows = [
                    DriftRow(now, event_time, self.reference.version, name, score, n)
                    for name, (score, n) in self.drift_scores.items()
                ]
            self._changed_versions.clear()
            self._drift_changed = False
            self._last_persist = time.monotonic()
        try:
            self.history.write(accuracy, drift_rows, coverage)
            if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                self._last_prune = time.monotonic()
                self.history.prune(timedelta(days=self.settings.retention_days), now)
        except Exception as e:  # the stream must go on when the history database is unavailable
            self.persist_errors += 1
            log.warning("monitor: could not store a snapshot (%s); will retry at the next one", e)
            return 0
        return len(accuracy) + len(drift_rows) + len(coverage)

    def close(self) -> None:
        """Store the last figures and release the database."""
        self.persist()
        if self.history is not None:
            self.history.close()


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
