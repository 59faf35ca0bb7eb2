"""`tsops monitor`: the stored figures as a summary, and the Evidently drift report.

The report compares the champion's training rows (the reference span logged with the model,
read back from the offline store) with the latest `monitoring.report_window` steps per entity
of the offline store, which holds the stream's observations, on the target and the monitored
features; it is written as HTML and logged to the champion's MLflow run under `monitoring/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from tsops import registry
from tsops.errors import DataError, ModelError
from tsops.features.store import FeatureStoreClient
from tsops.monitoring import drift
from tsops.monitoring.history import ALL_STEPS, MonitorHistory
from tsops.settings import AccuracyTriggerSettings, DriftTriggerSettings, Project

# Below these, a figure rests on too few observations to act on: `tsops monitor` flags it.
# The retrain triggers' own minimums apply when they are configured.
MIN_ERRORS_PER_STEP = 30
MIN_DRIFT_ROWS = 200


def summary(project: Project) -> dict[str, Any]:
    """The latest stored rolling MAE per version (overall and by step, next to the training
    backtest MAE), its interval coverage per level (`coverage["80"]`), and drift score per
    column, each with how many observations it rests on and whether that is enough
    (`enough`); times are event times (`event_time`, how far the data reaches) and wall-clock
    snapshot times (`at`), apart."""
    history = MonitorHistory.for_project(project)
    try:
        accuracy = history.latest_accuracy()
        coverage = history.latest_coverage()
        drift_rows = history.latest_drift()
    finally:
        history.close()
    info = {v.version: v for v in registry.versions(project)}
    versions: dict[int, dict[str, Any]] = {}
    for row in accuracy:
        known = info.get(row.model_version)
        entry = versions.setdefault(
            row.model_version,
            {
                "model_version": row.model_version,
                "aliases": known.aliases if known else [],
                "backtest_mae": known.metrics.get("lstm_mae") if known else None,
                "mae": None,
                "n": 0,
                "at": None,
                "event_time": None,
                "by_step": [],
                "coverage": {},
            },
        )
        if row.step == ALL_STEPS:
            entry.update(mae=row.mae, n=row.n, at=row.as_dict()["at"], event_time=row.as_dict()["event_time"])
        else:
            entry["by_step"].append({"step": row.step, "mae": row.mae, "n": row.n})
    for cov in coverage:  # per level: the latest rolling share inside, overall and by step
        if cov.model_version not in versions:
            continue
        level = versions[cov.model_version]["coverage"].setdefault(
            cov.level, {"coverage": None, "n": 0, "by_step": []}
        )
        if cov.step == ALL_STEPS:
            level.update(coverage=cov.coverage, n=cov.n)
        else:
            level["by_step"].append({"step": cov.step, "coverage": cov.coverage, "n": cov.n})
    trigger = _drift_trigger(project)
    min_errors = next(
        (t.min_samples for t in project.settings.retrain.triggers if isinstance(t, AccuracyTriggerSettings)),
        MIN_ERRORS_PER_STEP,
    )
    min_rows = MIN_DRIFT_ROWS if trigger is None else trigger.min_rows
    horizon = project.settings.model.horizon
    for entry in versions.values():
        entry["horizon"] = horizon
        entry["steps_with_errors"] = len(entry["by_step"])
        entry["errors"] = sum(s["n"] for s in entry["by_step"])  # what the online MAE averages
        entry["fewest_errors_per_step"] = entry["n"]  # 0 while some step has none yet
        entry["enough"] = entry["n"] >= min_errors
    drift_entries = [
        {**r.as_dict(), "enough": r.n >= min_rows} for r in sorted(drift_rows, key=lambda r: -r.score)
    ]
    return {
        "accuracy": [versions[v] for v in sorted(versions)],
        "drift": drift_entries,
        "min_errors_per_step": min_errors,
        "min_drift_rows": min_rows,
        "drift_threshold": None if trigger is None else trigger.threshold,
        "drift_watched": None if trigger is None else (trigger.columns or [project.settings.series.target]),
        "database": history.url.split("@")[-1],
    }


def _drift_trigger(project: Project) -> DriftTriggerSettings | None:
    return next((t for t in project.settings.retrain.triggers if isinstance(t, DriftTriggerSettings)), None)


@dataclass
class ReportOutcome:
    path: Path
    version: int
    run_id: str
    reference_rows: int
    current_rows: int
    scores: dict[str, float]  # Evidently's drift score per column


def write_report(project: Project, output: Path | None = None) -> ReportOutcome:
    """Evidently `DataDriftPreset` report, reference (training rows) vs the recent window, as
    HTML, logged to the champion's run."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    settings = project.settings
    series, cfg = settings.series, settings.monitoring
    client = registry.connect(project)
    name = settings.model.name
    version = registry.version_for_alias(client, name, registry.CHAMPION)
    if version is None:
        raise ModelError("no champion to report on; run tsops train and tsops promote", name)
    reference = drift.load_reference(project, version)
    if reference is None or reference.span is None:
        raise ModelError(
            f"v{version} has no drift reference (trained before monitoring existed); retrain it",
            f"{name}/{version}",
        )
    columns = drift.monitored_columns(project)
    store = FeatureStoreClient(project)
    store.compact_offline()  # the stream's observations since the last merge
    frame = store.read_offline()
    time = series.time
    first, last = (pd.Timestamp(t).tz_localize(None) for t in reference.span)
    ref = frame[(frame[time] >= first) & (frame[time] <= last)]
    if len(ref) > cfg.report_reference_rows:
        ref = ref.sample(cfg.report_reference_rows, random_state=0)
    current = frame.sort_values(time).groupby(series.entity_col, sort=False).tail(cfg.report_window)
    if ref.empty or current.empty:
        raise DataError(
            f"nothing to compare: {len(ref)} reference and {len(current)} recent rows in the offline store",
            str(project.offline_path),
        )
    trigger = _drift_trigger(project)
    threshold = None if trigger is None else trigger.threshold
    definition = DataDefinition(numerical_columns=columns)
    report = Report([DataDriftPreset(columns=columns, method="psi", threshold=threshold)])
    snapshot = report.run(
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(ref[columns].reset_index(drop=True), data_definition=definition),
        name=f"{name} v{version} drift",
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = output or project.state_dir / "reports" / f"drift-v{version}-{stamp}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    run_id = client.get_model_version(name, str(version)).run_id or ""
    client.log_artifact(run_id, str(path), artifact_path="monitoring")
    scores = {
        m["config"]["column"]: float(m["value"])
        for m in snapshot.dict()["metrics"]
        if m["config"].get("type", "").endswith("ValueDrift")
    }
    return ReportOutcome(path, version, run_id, len(ref), len(current), scores)
