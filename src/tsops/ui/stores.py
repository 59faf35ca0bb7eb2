"""What the dashboard reads from the project's stores (blocking calls, made off the event
loop by the feed's thread): model versions and champion moves from the MLflow registry, the
decision log of the lifecycle, and the monitoring history (online accuracy, drift).

While a history does not exist yet (no stream has run with the monitor, no retrain or
promotion was recorded), the readers say so (`available: false` and a `reason`) instead of
failing, and never create the monitoring database themselves.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tsops import registry
from tsops.lifecycle import decisions
from tsops.monitoring.history import ALL_STEPS, MonitorHistory, database_url
from tsops.settings import Project
from tsops.status import backtest_figures

log = logging.getLogger("tsops.ui")

BACKTEST_METRIC = "lstm_mae"


def ms(value: datetime | str | None) -> int | None:
    """Milliseconds since the epoch; naive datetimes are UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


class RegistryReader:
    """Model versions, aliases, champion history and decisions of the project's model."""

    def __init__(self, project: Project):
        self.project = project
        self.name = project.settings.model.name
        self._client: Any = None
        self._metrics: dict[str, dict[str, float]] = {}  # run id → metrics (final once registered)

    def read(self) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = registry.connect(self.project)
        client = self._client
        try:
            model = client.get_registered_model(self.name)
        except MlflowException:
            return {"available": False, "reason": f"no registered model {self.name!r} yet", "versions": []}
        aliases: dict[int, list[str]] = {}
        for alias, v in (model.aliases or {}).items():
            aliases.setdefault(int(v), []).append(alias)
        history = [int(v) for v in json.loads((model.tags or {}).get(registry.HISTORY_TAG, "[]"))]
        versions = []
        for mv in sorted(client.search_model_versions(f"name='{self.name}'"), key=lambda m: int(m.version)):
            tags = dict(mv.tags or {})
            metrics = self._run_metrics(mv.run_id)
            versions.append(
                {
                    "version": int(mv.version),
                    "aliases": sorted(aliases.get(int(mv.version), [])),
                    "created": mv.creation_timestamp,
                    "backtest_mae": metrics.get(BACKTEST_METRIC),
                    "promoted_at": ms(tags.get("tsops.promoted_at")),
                    "promotion_reason": tags.get("tsops.promotion_reason"),
                    "trigger": tags.get("tsops.retrain.trigger"),
                    "mode": tags.get("tsops.retrain.mode"),
                    "rolled_back": tags.get("tsops.rolled_back") == "true",
                    **baselines(metrics, tags),
                }
            )
        decisions = self._decisions()
        return {
            "available": True,
            "name": self.name,
            "versions": versions,
            "champion": next((v for v, a in aliases.items() if registry.CHAMPION in a), None),
            "challenger": next((v for v, a in aliases.items() if registry.CHALLENGER in a), None),
            "champion_history": history,
            "moves": champion_moves(versions, decisions["items"]),
            "decisions": decisions,
        }

    def _run_metrics(self, run_id: str | None) -> dict[str, float]:
        if not run_id:
            return {}
        if run_id not in self._metrics:
            self._metrics[run_id] = dict(self._client.get_run(run_id).data.metrics)
        return self._metrics[run_id]

    def _decisions(self) -> dict[str, Any]:
        items = []
        for d in decisions.history(self._client, self.name):
            row = d.as_dict()
            row["at_ms"] = ms(row.get("at"))
            items.append(row)
        if not items:
            return {
                "available": False,
                "reason": "no retrain or promotion decision recorded yet",
                "items": [],
            }
        return {"available": True, "items": items}


def baselines(metrics: dict[str, float], tags: dict[str, str]) -> dict[str, Any]:
    """A version's backtest table: the LSTM and every baseline (MAE, MASE, the ratio of the MAE
    to the best baseline's), best first, and whether the LSTM beats the best baseline."""
    figures = backtest_figures(metrics, tags)
    best = figures.get("best_baseline")
    names = sorted({k[: -len("_mae")] for k in figures["metrics"] if k.endswith("_mae")})
    best_mae = metrics.get(f"{best}_mae") if best else None
    rows = [
        {
            "model": name,
            "mae": metrics[f"{name}_mae"],
            "mase": metrics.get(f"{name}_mase"),
            "vs_best_baseline": metrics[f"{name}_mae"] / best_mae if best_mae else None,
            "fit_seconds": metrics.get(f"{name}_fit_seconds"),
        }
        for name in names
    ]
    return {
        "backtest": sorted(rows, key=lambda r: r["mae"]),
        "best_baseline": best,
        "lstm_vs_best_baseline": figures.get("lstm_vs_best_baseline"),
        "lstm_vs_best_baseline_interval": figures.get("lstm_vs_best_baseline_interval"),
        # what the network corrects, and that forecast alone (None on versions older than the tags)
        "lstm_base": figures.get("lstm_base"),
        "lstm_base_mae": figures.get("lstm_base_mae"),
        "beats_best_baseline": figures.get("beats_best_baseline"),
    }


def champion_moves(versions: list[dict[str, Any]], logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """When `champion` moved, oldest first: from the decision log (promotions, rollbacks) and,
    for moves it does not hold, the versions' `tsops.promoted_at` tags (second resolution)."""
    moves = [
        {
            "at": d["at_ms"],
            "version": d["champion"],
            "previous": d.get("previous"),
            "kind": d.get("kind"),
            "reason": d.get("reason"),
        }
        for d in logged
        if d.get("outcome") in ("promoted", "rolled_back") and d.get("champion") is not None
    ]
    for v in versions:
        at = v["promoted_at"]
        if at is None or any(m["version"] == v["version"] and abs((m["at"] or 0) - at) < 2000 for m in moves):
            continue
        moves.append(
            {
                "at": at,
                "version": v["version"],
                "previous": None,
                "kind": "promote",
                "reason": v["promotion_reason"],
            }
        )
    return sorted(moves, key=lambda m: m["at"] or 0)


class MonitoringReader:
    """The monitoring history tables, read incrementally: each call adds the snapshots stored
    since the last one to what the dashboard holds (the latest `keep` per series)."""

    def __init__(self, project: Project, history: timedelta, keep: int = 2000):
        self.project = project
        self.history = history
        self.keep = keep
        self._store: MonitorHistory | None = None
        self._accuracy_since: datetime | None = None
        self._drift_since: datetime | None = None
        self.accuracy: dict[int, list[list[Any]]] = {}  # version → [at ms, event time ms, mae, n]
        self.drift: dict[str, list[list[Any]]] = {}  # feature → [at ms, score, n, reference version]
        self.by_step: dict[int, list[float | None]] = {}  # version → latest MAE of steps 1..H
        self.reason: str | None = "no monitoring history yet"

    def _open(self) -> MonitorHistory | None:
        url = database_url(self.project)
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            if not Path(parsed.database).exists():  # do not create it: the stream's monitor does
                self.reason = "no monitoring history yet (a stream's monitor creates it)"
                return None
        return MonitorHistory(url)

    def read(self, now: datetime) -> bool:
        """Read what was stored since the last call; returns whether anything was new."""
        if self._store is None:
            self._store = self._open()
            if self._store is None:
                return False
        store = self._store
        start = now.replace(tzinfo=None) - self.history
        changed = False
        fresh = [
            r
            for r in store.accuracy(since=self._accuracy_since or start)
            if self._accuracy_since is None or r.at > self._accuracy_since
        ]
        for r in fresh:
            if r.step == ALL_STEPS:
                self.accuracy.setdefault(r.model_version, []).append([ms(r.at), ms(r.event_time), r.mae, r.n])
            else:
                steps = self.by_step.setdefault(r.model_version, [])
                steps.extend([None] * (r.step - len(steps)))
                steps[r.step - 1] = r.mae
        if fresh:
            self._accuracy_since = max(r.at for r in fresh)
            changed = True
        drift = [
            r
            for r in store.drift(since=self._drift_since or start)
            if self._drift_since is None or r.at > self._drift_since
        ]
        for d in drift:
            self.drift.setdefault(d.feature, []).append([ms(d.at), d.score, d.n, d.model_version])
        if drift:
            self._drift_since = max(d.at for d in drift)
            changed = True
        for series in (*self.accuracy.values(), *self.drift.values()):
            del series[: max(0, len(series) - self.keep)]
        if self.accuracy or self.drift:
            self.reason = None
        return changed

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
