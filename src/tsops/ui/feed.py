"""The dashboard's data layer: everything the page shows, kept up to date by one background
thread that reads the project's files and stores incrementally. Pure Python, no web framework:
the routes call `touch` (keep the thread running), `ensure_fresh`, and read `overview`,
`entity`, `entities` or `rendered` (both as JSON, once per data version).

Sources (they work when `tsops serve` and `tsops stream` are separate processes on one machine):

- actuals: the offline store: its Parquet file once (the latest `points` steps per entity,
  again after each compaction) and the stream's part files as they appear;
- forecasts: the stream's prediction sink (a JSONL file or a folder of Parquet parts), tailed;
- dead letters: the dead-letter sink, tailed;
- stream lag and throughput: from the prediction records (their `latency_ms`, how many per
  second, how long ago the last one) and, when `serving.dashboard.stream_metrics_url` is set,
  the worker's Prometheus metrics (consumer lag);
- request latency: the serving app's own Prometheus registry, in-process;
- models, champion moves, decisions: the MLflow registry and the lifecycle's decision log;
- online accuracy and drift: the monitoring history tables.

The thread starts with the first dashboard request and stops after `IDLE_S` seconds without
one, so a server nobody watches does no dashboard work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tsops.features.offline import PostgresOfflineStore, offline_store
from tsops.settings import DriftTriggerSettings, Project
from tsops.ui.activity import RequestActivity, SinkTail, StreamActivity, WorkerMetrics
from tsops.ui.series import EntitySeries
from tsops.ui.stores import MonitoringReader, RegistryReader
from tsops.ui.tails import FileVersion, PartsTail

log = logging.getLogger("tsops.ui")

IDLE_S = 60.0  # the thread stops this long after the last dashboard request
REGISTRY_EVERY_S = 5.0
MONITORING_EVERY_S = 2.0
RECENT_DEAD_LETTERS = 8
TIMELINE_SAMPLES = 600  # wall-clock samples of requests and stream throughput kept (10 min at 1 s)
SHOWN_POINTS = 300  # longer series are thinned to this many points in the payload


def thin(points: list[Any], most: int = SHOWN_POINTS) -> list[Any]:
    """At most `most` points, evenly spaced, the first and the latest always kept."""
    if len(points) <= most:
        return points
    picks = np.linspace(0, len(points) - 1, most).round().astype(int)
    return [points[i] for i in picks]


class DashboardFeed:
    """What the dashboard shows, refreshed by a background thread while someone watches.

    `serving_metrics`: the serving app's Prometheus registry (request latency).
    `loaded`: returns the versions the server has loaded by role (champion, challenger)."""

    def __init__(
        self,
        project: Project,
        *,
        serving_metrics: Any = None,
        loaded: Callable[[], dict[str, int | None]] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        s = project.settings
        self.project = project
        self.cfg = s.serving.dashboard
        self.loaded = loaded or (lambda: {})
        self.clock = clock
        series = s.series
        self.step_ns = int(series.step.value)
        self.series = EntitySeries(self.cfg.points, self.step_ns)
        self.entity_col, self.time_col, self.target = series.entity_col, series.time, series.target
        # the first file sink, else the first sink (whose type the page then names as unreadable)
        sinks = sorted(s.stream.sinks, key=lambda c: c.type != "file")
        self.predictions = SinkTail(project, sinks[0] if sinks else None)
        self.dead = SinkTail(project, s.stream.dead_letter)
        self.parts = PartsTail(
            project.offline_path.parent / "stream", [self.entity_col, self.time_col, self.target]
        )
        self.offline = FileVersion(project.offline_path)
        store = offline_store(project)  # PostgreSQL (cluster mode): tailed by insertion number
        self.offline_table = store if isinstance(store, PostgresOfflineStore) else None
        self._offline_seq: int | None = None
        self.registry = RegistryReader(project)
        self.monitoring = MonitoringReader(project, timedelta(hours=self.cfg.history_hours))
        self.serving_timeline: deque[list[Any]] = deque(maxlen=TIMELINE_SAMPLES)
        self.stream_timeline: deque[list[Any]] = deque(maxlen=TIMELINE_SAMPLES)
        self.requests = None if serving_metrics is None else RequestActivity(serving_metrics)
        self.stream = StreamActivity()
        url = self.cfg.stream_metrics_url
        self.worker = None if url is None else WorkerMetrics(url, min(2.0, self.cfg.refresh_s))
        self.models: dict[str, Any] = {"available": False, "reason": "not read yet", "versions": []}
        self.dead_total = 0
        self.dead_by_reason: Counter[str] = Counter()
        self.dead_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_DEAD_LETTERS)
        self.last_prediction_at: float | None = None
        self.worker_figures: dict[str, Any] = {"url": url, "error": None}
        self.errors: dict[str, str] = {}  # source → last error, shown on the page
        self._failures: dict[str, str] = {}  # source → the full reason, for the log only
        self.version = 0  # bumped whenever something the page shows changed
        self._rendered: dict[Any, bytes] = {}
        self._rendered_version = -1
        self.refreshed_at: float | None = None
        self._last_registry = -float("inf")
        self._last_monitoring = -float("inf")
        self._lock = threading.RLock()  # guards the state above
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_touch = 0.0

    # -- the thread -----------------------------------------------------------------------

    def touch(self) -> None:
        """A dashboard request arrived: keep the thread running (start it if needed)."""
        self._last_touch = time.monotonic()
        with self._lock:
            if self._stop.is_set() or self.running:
                return
            self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the reader thread is running (it is only while someone watches)."""
        return self._thread is not None and self._thread.is_alive()

    def ensure_fresh(self) -> None:
        """Refresh now unless a refresh already happened (blocking: call off the event loop)."""
        if self.refreshed_at is None:
            self.refresh()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() - self._last_touch < IDLE_S:
            started = time.monotonic()
            self.refresh()
            self._stop.wait(max(0.05, self.cfg.refresh_s - (time.monotonic() - started)))

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.monitoring.close()

    # -- one refresh ----------------------------------------------------------------------

    def refresh(self) -> bool:
        """Read what is new everywhere; returns whether anything changed (blocking)."""
        with self._refresh_lock:
            now = self.clock()
            changed = False
            steps: list[tuple[str, Callable[[float], bool]]] = []
            if self.worker is not None:  # first: the stream files' sample carries its lag
                steps.append(("stream_metrics", self._scrape_stream))
            steps += [
                ("actuals", self._read_actuals),
                ("forecasts", self._read_stream_files),
                ("serving", self._sample_serving),
            ]
            if now - self._last_registry >= REGISTRY_EVERY_S:
                self._last_registry = now
                steps.append(("registry", self._read_registry))
            if now - self._last_monitoring >= MONITORING_EVERY_S:
                self._last_monitoring = now
                steps.append(("monitoring", self._read_monitoring))
            for name, step in steps:
                try:
                    changed |= step(now)
                    self._failures.pop(name, None)
                    if self.errors.pop(name, None) is not None:
                        changed = True
                except Exception as e:  # one broken source must not blank the whole page
                    # The page is unauthenticated: it says what failed, the server's log says
                    # why (the reason may hold a database host and port, or a path).
                    message = f"{type(e).__name__}: {e}"[:300]
                    shown = f"reading {name} failed ({type(e).__name__}); see the server log"
                    if self._failures.get(name) != message:
                        log.warning("dashboard: reading %s failed: %s", name, message)
                        self._failures[name] = message
                        self.errors[name] = shown
                        changed = True
            with self._lock:
                self.refreshed_at = now
                if changed:
                    self.version += 1
            return changed

    def _read_actuals(self, now: float) -> bool:
        if self.offline_table is not None:
            return self._read_offline_table() > 0
        added = 0
        if self.offline.changed():  # ingested or compacted: re-read the latest steps once
            added += self._read_offline_tail()
        for table in self.parts.read():
            added += self._add_table(table)
        return added > 0

    def _read_offline_tail(self) -> int:
        path = self.project.offline_path
        latest = pc.max(pq.read_table(path, columns=[self.time_col]).column(0)).as_py()
        if latest is None:
            return 0
        cutoff = latest - timedelta(microseconds=self.cfg.points * self.step_ns // 1000)
        table = pq.read_table(
            path,
            columns=[self.entity_col, self.time_col, self.target],
            filters=[(self.time_col, ">", cutoff)],
        )
        return self._add_table(table)

    def _read_offline_table(self) -> int:
        assert self.offline_table is not None
        columns = [self.entity_col, self.time_col, self.target]
        frame, seq = self.offline_table.rows_after(
            self._offline_seq, columns, self.cfg.points, self.project.settings.series.step
        )
        self._offline_seq = seq
        if frame.empty:
            return 0
        frame[self.time_col] = pd.to_datetime(frame[self.time_col], utc=True)
        frame[self.target] = frame[self.target].astype(float)
        return self._add_table(pa.Table.from_pandas(frame, preserve_index=False))

    def _add_table(self, table: pa.Table) -> int:
        if table.num_rows == 0:
            return 0
        times = table.column(self.time_col)
        if pa.types.is_timestamp(times.type) and times.type.tz is not None:
            times = pc.cast(times, pa.timestamp(times.type.unit))  # the UTC wall time, tz dropped
        ns = pc.cast(pc.cast(times, pa.timestamp("ns")), pa.int64()).to_numpy()
        entities = [str(e) for e in table.column(self.entity_col).to_pylist()]
        values = table.column(self.target).to_numpy(zero_copy_only=False).astype(float)
        with self._lock:
            return self.series.add_actuals(entities, ns.tolist(), values.tolist())

    def _read_stream_files(self, now: float) -> bool:
        records, reset = self.predictions.read()
        dead, dead_reset = self.dead.read()
        with self._lock:
            if reset:
                self.series.clear_forecasts()
            if dead_reset:
                self.dead_total, self.dead_by_reason = 0, Counter()
                self.dead_recent.clear()
            self.series.add_forecasts(records)  # type: ignore[arg-type]  # JSON read back
            if records:
                self.last_prediction_at = now
            for d in dead:
                reason = str(d.get("error", "unknown"))
                self.dead_by_reason[reason] += 1
                self.dead_recent.append(
                    {"at": d.get("at"), "reason": reason, "detail": str(d.get("detail", ""))[:200]}
                )
            self.dead_total += len(dead)
            sample = self.stream.add(now, records, len(dead), self.worker_figures.get("lag"))
            if sample is not None:
                self.stream_timeline.append(sample)
        return bool(records or dead or reset or dead_reset)

    def _sample_serving(self, now: float) -> bool:
        sample = None if self.requests is None else self.requests.sample(now)
        if sample is None:
            return False
        with self._lock:
            self.serving_timeline.append(sample)
        return True

    def _scrape_stream(self, now: float) -> bool:
        assert self.worker is not None
        figures = self.worker.scrape(now)
        with self._lock:
            changed = figures != self.worker_figures
            self.worker_figures = figures
        return changed

    def _read_registry(self, now: float) -> bool:
        models = self.registry.read()
        with self._lock:
            changed = models != self.models
            self.models = models
        return changed

    def _read_monitoring(self, now: float) -> bool:
        with self._lock:  # the reader appends to the series `overview` iterates (a few ms of SQL)
            return self.monitoring.read(datetime.fromtimestamp(now, UTC))

    # -- what the routes serve ------------------------------------------------------------

    def rendered(self, entity: str | None, step: int) -> tuple[bytes, bytes]:
        """The overview and one entity's chart data as JSON, built once per version of the data
        however many pages are open."""
        with self._lock:
            if self._rendered_version != self.version:
                self._rendered, self._rendered_version = {}, self.version
            key = (entity, step)
            if "overview" not in self._rendered:
                self._rendered["overview"] = orjson.dumps(self.overview())
            if key not in self._rendered:
                data = None if entity is None else self.entity(entity, step)
                self._rendered[key] = orjson.dumps(data)
            return self._rendered["overview"], self._rendered[key]

    def entities(self) -> list[str]:
        with self._lock:
            return self.series.entities

    def entity(self, entity: str, step: int = 1) -> dict[str, Any] | None:
        """The main chart's data for one entity, or None if the dashboard holds none for it."""
        with self._lock:
            if entity not in self.series.actuals and entity not in self.series.forecasts:
                return None
            return self.series.payload(
                entity, step, self.cfg.fan, self.monitoring.by_step or self._backtest_band()
            )

    def _backtest_band(self) -> dict[int, list[float | None]] | None:
        """Without online accuracy, a band of ± the training backtest MAE (one figure for all steps)."""
        horizon = self.project.settings.model.horizon
        out = {
            v["version"]: [v["backtest_mae"]] * horizon
            for v in self.models.get("versions", [])
            if v.get("backtest_mae") is not None
        }
        return out or None

    def _shown(self, path: Path | None) -> str | None:
        """A path for the unauthenticated page: relative to the project, else its name only."""
        if path is None:
            return None
        try:
            return str(Path(path).resolve().relative_to(self.project.root))
        except ValueError:
            return Path(path).name

    def overview(self) -> dict[str, Any]:
        """Everything but the per-entity chart, as one JSON-able dict."""
        s = self.project.settings
        threshold = next(
            (t.threshold for t in s.retrain.triggers if isinstance(t, DriftTriggerSettings)), None
        )
        with self._lock:
            m = self.monitoring
            return {
                "project": s.project,
                "model": s.model.name,
                "schema": {
                    "entity": self.entity_col,
                    "time": self.time_col,
                    "target": self.target,
                    "freq": s.series.freq,
                },
                "horizon": s.model.horizon,
                "version": self.version,
                "refreshed_at": None if self.refreshed_at is None else int(self.refreshed_at * 1000),
                "loaded": self.loaded(),
                "entities": len(self.series.actuals),
                "serving": {
                    "available": self.requests is not None,
                    "timeline": thin(list(self.serving_timeline)),
                    "columns": ["t", "requests_per_s", "p50_s", "p95_s", "p99_s", "error_share"],
                },
                "stream": {
                    # file names only: the page is unauthenticated, absolute paths stay private
                    "predictions_path": self._shown(self.predictions.path),
                    "predictions_reason": self.predictions.reason,
                    "predictions_total": self.stream.totals.predictions,
                    "actuals_total": self.series.actuals_added,
                    "last_prediction_at": None
                    if self.last_prediction_at is None
                    else int(self.last_prediction_at * 1000),
                    "timeline": thin(list(self.stream_timeline)),
                    "columns": [
                        "t",
                        "predictions_per_s",
                        "latency_p50_ms",
                        "latency_p95_ms",
                        "dead_per_s",
                        "lag",
                    ],
                    "metrics": dict(self.worker_figures),
                },
                "dead_letters": {
                    "path": self._shown(self.dead.path),
                    "total": self.dead_total,
                    "by_reason": dict(self.dead_by_reason.most_common()),
                    "recent": list(self.dead_recent)[::-1],
                },
                "models": self.models,
                "accuracy": {
                    "available": bool(m.accuracy),
                    "reason": None if m.accuracy else m.reason,
                    "series": [{"version": v, "points": thin(p)} for v, p in sorted(m.accuracy.items())],
                    "by_step": {str(v): steps for v, steps in m.by_step.items()},
                    "columns": ["at", "event_time", "mae", "n"],
                },
                "drift": {
                    "available": bool(m.drift),
                    "reason": None if m.drift else m.reason,
                    "threshold": threshold,
                    "series": [{"feature": f, "points": thin(p)} for f, p in sorted(m.drift.items())],
                    "columns": ["at", "score", "n", "reference_version"],
                },
                "errors": dict(self.errors),
            }
