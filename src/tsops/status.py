"""`tsops status`: models, versions, aliases, metrics and the online figures the stream's monitor
stored; feature views; online rows; the decision log (retrains, promotions, rollbacks)."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tsops import registry
from tsops.errors import CorruptFile, StoreError
from tsops.features.store import FeatureStoreClient
from tsops.leftovers import fail_abandoned_runs
from tsops.lifecycle import decisions
from tsops.settings import Project

log = logging.getLogger(__name__)

MAX_ENTITIES = 1000
_SHOWN_SUFFIXES = ("_mae", "_rmse", "_mase", "_fit_seconds")
_HIDDEN = ("val_mae", "lstm_mae_by_step")


def spread_note(spread: tuple[float, float] | list[float] | None, stretches: float | None = None) -> str:
    """What the ratio's spread over resampled backtest origins says; without one, whether the
    origins were too few to resample (`stretches`: the horizons they span)."""
    if spread is None:
        if stretches is None:
            return ""  # a version older than the ranges, or a single origin
        return f"; the origins span {int(stretches)} horizon(s), too few to say how far this ratio can move"
    low, high = spread
    if not (high > low):
        return ""
    note = f"; 90% of resampled origins give {low:.3f}–{high:.3f}"
    return note + (", so this holdout cannot tell the two apart" if low < 1.0 < high else "")


def backtest_figures(metrics: dict[str, float], tags: dict[str, str]) -> dict[str, Any]:
    """The LSTM beside every baseline (a version's run metrics and tags), and plainly whether
    it beats the best of them (`tsops status` and the dashboard)."""
    shown = {k: v for k, v in metrics.items() if k.endswith(_SHOWN_SUFFIXES) and k not in _HIDDEN}
    baselines = sorted({k.rsplit("_", 1)[0] for k in shown if k.endswith("_mae")} - {"lstm"})
    base = {  # what the network corrects, and that forecast alone (None on versions older than the tags)
        "lstm_base": tags.get("tsops.lstm_base"),
        "lstm_base_mae": float(tags["tsops.lstm_base_mae"]) if "tsops.lstm_base_mae" in tags else None,
    }
    if "lstm_mae" not in metrics or not baselines:
        return {"metrics": shown, **base}
    best = min(baselines, key=lambda b: metrics[f"{b}_mae"])
    ratio = metrics["lstm_mae"] / metrics[f"{best}_mae"] if metrics[f"{best}_mae"] > 0 else float("inf")
    low, high = (metrics.get(f"lstm_vs_best_baseline_{end}") for end in ("low", "high"))
    spread = [low, high] if low is not None and high is not None else None
    return {
        "metrics": shown,
        "best_baseline": best,
        "lstm_vs_best_baseline": ratio,
        # its central 90% over resampled origins (None on versions older than these metrics)
        "lstm_vs_best_baseline_interval": spread,
        "beats_best_baseline": ratio < 1.0,
        "verdict": (
            f"the LSTM beats the best baseline ({best}): MAE ratio {ratio:.3f}"
            if ratio < 1.0
            else f"the LSTM does NOT beat the best baseline ({best}): MAE ratio {ratio:.3f}"
        )
        + spread_note(spread, metrics.get("backtest_stretches") if spread is None else None),
        "baseline_failures": int(tags.get("tsops.baseline_failures", "0") or 0),
        **base,
    }


def online(project: Project) -> dict[int, dict[str, Any]]:
    """Per model version, the latest online figures the stream's monitor stored: rolling MAE
    and the share of actuals inside each interval level (`coverage["80"]`), with the fewest
    observations any step rests on. Empty when no stream has stored any (a missing SQLite
    file is not created) or the monitoring database cannot be read (logged)."""
    from tsops.monitoring.history import ALL_STEPS, MonitorHistory, database_url

    if project.settings.monitoring.database is None and not (project.state_dir / "monitoring.db").exists():
        return {}
    try:
        history = MonitorHistory(database_url(project))
        try:
            accuracy, coverage = history.latest_accuracy(), history.latest_coverage()
        finally:
            history.close()
    except (StoreError, SQLAlchemyError) as e:  # status shows the rest; the reason is logged
        log.warning("status: no online figures: the monitoring database cannot be read (%s)", e)
        return {}
    out: dict[int, dict[str, Any]] = {}
    for row in accuracy:
        if row.step == ALL_STEPS:
            out.setdefault(row.model_version, {"coverage": {}}).update(mae=row.mae, n=row.n)
    for c in coverage:
        if c.step == ALL_STEPS:
            entry = out.setdefault(c.model_version, {"mae": None, "n": 0, "coverage": {}})
            entry["coverage"][c.level] = {"coverage": c.coverage, "n": c.n}
    return out


def collect(project: Project) -> dict[str, Any]:
    series = project.settings.series
    fail_abandoned_runs(registry.connect(project), project.experiment)
    figures = online(project)
    models = [
        {
            "name": v.name,
            "version": v.version,
            "aliases": v.aliases,
            **backtest_figures(v.metrics, v.tags),
            "created": v.created.isoformat(timespec="seconds"),
            "promotion_reason": v.tags.get("tsops.promotion_reason"),
            "left_out": json.loads(v.tags.get(registry.LEFT_OUT_TAG, "{}")),
            "backtest_coverage": {
                k.rsplit("_", 1)[1]: x
                for k, x in v.metrics.items()
                if k.startswith("lstm_coverage_") and k.count("_") == 2
            },
            # each level's central 90% over resampled origins ("80": [low, high])
            "backtest_coverage_interval": {
                level: [v.metrics[f"lstm_coverage_{level}_low"], v.metrics[f"lstm_coverage_{level}_high"]]
                for level in sorted({k.split("_")[2] for k in v.metrics if k.startswith("lstm_coverage_")})
                if f"lstm_coverage_{level}_low" in v.metrics and f"lstm_coverage_{level}_high" in v.metrics
            },
            "online": figures.get(v.version),
        }
        for v in registry.versions(project)
    ]
    store = FeatureStoreClient(project)
    try:
        entities = sorted(store.read_offline()[series.entity_col].astype(str).unique())
    except CorruptFile:
        raise  # names the file and what to do; an empty answer would hide it
    except StoreError:
        entities = []
    views = [
        {"name": fv.name, "features": len(fv.features), "entities": list(fv.entities)}
        for fv in store.store.list_feature_views()
    ]
    return {
        "project": project.settings.project,
        "models": models,
        "schema": {
            "entity": series.entity_col,
            "time": series.time,
            "target": series.target,
            "freq": series.freq,
        },
        "entities": entities[:MAX_ENTITIES],
        "entity_count": len(entities),
        "feature_views": views,
        "online_store": project.settings.stores.online.type,
        "online_rows": store.online_row_count(entities) if views else 0,
        "decisions": [
            d.as_dict() for d in decisions.history(registry.connect(project), project.settings.model.name)
        ],
    }
