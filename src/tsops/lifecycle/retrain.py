"""Continual learning: retrain (warm start or from scratch) → challenger → gate → promotion,
automatic rollback on worse online accuracy, and the `Retrainer` a long-running process calls.

Warm start fine-tunes the champion's weights on the latest `retrain.warm_window` steps per
entity (`retrain.warm_epochs` epochs at `retrain.warm_learning_rate`); scratch trains a new
network on the latest `retrain.scratch_window` steps. Both go through `models.pipeline.train`,
so a retrain is an ordinary MLflow run and registered version with a backtest on the latest
`retrain.holdout` steps (default `backtest.holdout`), which is also the gate's window: the
offline store holds the stream's observations, so the windows move with the stream.

A retrain that fails (bad data, a diverging loss) is recorded with its reason and leaves the
champion as it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from tsops import registry
from tsops.errors import ConfigError, ModelError, TsopsError
from tsops.features.definitions import FeatureSet
from tsops.lifecycle import decisions, promotion, triggers
from tsops.lifecycle.decisions import Decision
from tsops.monitoring.history import ALL_STEPS, AccuracyRow, MonitorHistory
from tsops.settings import Project, RetrainMode

log = logging.getLogger(__name__)

_retrain_lock = threading.Lock()  # one retrain at a time per process


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def retrain_view(project: Project, mode: RetrainMode) -> Project:
    """The project as a retrain sees it: the retrain holdout, and warm-start epochs and rate."""
    s = project.settings
    cfg = s.retrain
    model: dict[str, Any] = {"threads": cfg.threads}
    if mode == "warm":
        model.update(epochs=cfg.warm_epochs, learning_rate=cfg.warm_learning_rate)
    update: dict[str, Any] = {"model": s.model.model_copy(update=model)}
    if cfg.holdout is not None:
        update["backtest"] = s.backtest.model_copy(update={"holdout": cfg.holdout})
    return Project(project.root, s.model_copy(update=update))


def _check_window(view: Project, mode: RetrainMode) -> int:
    s = view.settings
    window = s.retrain.warm_window if mode == "warm" else s.retrain.scratch_window
    need = s.backtest.holdout + FeatureSet(s.features).lookback + s.model.horizon + 10
    if window < need:
        raise ConfigError(
            f"{window} steps cannot hold the holdout ({s.backtest.holdout}), the features' lookback "
            f"and the horizon; use at least {need}",
            f"retrain.{mode}_window",
        )
    return window


def retrain(
    project: Project,
    *,
    mode: RetrainMode | None = None,
    reason: str = "requested",
    trigger: str = "manual",
    figures: Mapping[str, Any] | None = None,
    show_progress: bool = False,
) -> Decision:
    """Train a challenger (`mode` default: warm if there is a champion, else scratch), gate it
    against the champion on the latest window, promote it if `retrain.auto_promote`, and record
    the decision. Never raises for a failed training: the decision says `failed` and why."""
    from tsops.models.pipeline import train

    client = registry.connect(project)
    name = project.settings.model.name
    champion = registry.version_for_alias(client, name, registry.CHAMPION)
    mode = mode or ("warm" if champion is not None else "scratch")
    base: dict[str, Any] = dict(figures or {})
    started, started_ms = time.perf_counter(), int(time.time() * 1000)
    with _retrain_lock:
        run_id = None
        try:
            view = retrain_view(project, mode)
            window = _check_window(view, mode)
            base["window"] = window
            init = None
            if mode == "warm":
                if champion is None:
                    raise ModelError("no champion to warm-start from; use --mode scratch", "retrain.mode")
                _, init = registry.load_forecaster(project, version=champion)
            log.info("retrain (%s, %s): %s", trigger, mode, reason)
            outcome = train(view, show_progress=show_progress, init=init, window=window)
            run_id = outcome.run_id
            challenger = outcome.version
            for key, value in {"trigger": trigger, "mode": mode, "reason": reason}.items():
                client.set_model_version_tag(name, str(challenger), f"tsops.retrain.{key}", value)
                client.set_tag(run_id, f"tsops.retrain.{key}", value)
            base.update(
                backtest_mae=outcome.report.overall["lstm"]["mae"],
                epochs=outcome.epochs_run,
                train_seconds=round(outcome.seconds, 1),
            )
            if not project.settings.retrain.auto_promote:
                return _decide(
                    client,
                    name,
                    "logged",
                    f"{reason}; challenger v{challenger} logged, retrain.auto_promote is off",
                    challenger,
                    champion,
                    champion,
                    trigger,
                    mode,
                    base,
                    run_id,
                )
            gate = promotion.promote(view, challenger, record=False)
        except Exception as e:  # noqa: BLE001 — any failure is recorded; the champion stays
            run_id = run_id or _failed_run(project, started_ms)
            message = str(e) if isinstance(e, TsopsError) else f"{type(e).__name__}: {e}"
            if run_id:
                registry.connect(project).set_tag(run_id, "tsops.retrain.failed", message[:4000])
            base["seconds"] = round(time.perf_counter() - started, 1)
            log.warning("retrain failed (%s, %s): %s", trigger, mode, message)
            return _decide(
                client,
                name,
                "failed",
                f"{reason}; retrain failed: {message}",
                None,
                champion,
                champion,
                trigger,
                mode,
                base,
                run_id,
            )
    base.update(
        gate_challenger_mae=gate.challenger_mae,
        gate_champion_mae=gate.champion_mae,
        seconds=round(time.perf_counter() - started, 1),
    )
    return _decide(
        client,
        name,
        "promoted" if gate.promoted else "rejected",
        f"{reason}; {gate.reason}",
        challenger,
        gate.version if gate.promoted else champion,
        champion,
        trigger,
        mode,
        base,
        run_id,
    )


def _decide(
    client: Any,
    name: str,
    outcome: str,
    reason: str,
    version: int | None,
    champion: int | None,
    previous: int | None,
    trigger: str,
    mode: str | None,
    figures: Mapping[str, Any],
    run_id: str | None,
) -> Decision:
    d = Decision(
        kind="retrain",
        outcome=outcome,
        reason=reason,
        version=version,
        champion=champion,
        previous=previous,
        trigger=trigger,
        mode=mode,
        figures={k: v for k, v in figures.items() if v is not None},
        run_id=run_id,
    )
    decisions.record(client, name, d)
    return d


def _failed_run(project: Project, since_ms: int) -> str | None:
    """The training run this retrain started (MLflow marked it failed), if it got that far."""
    from mlflow.exceptions import MlflowException

    client = registry.connect(project)
    try:
        experiment = client.get_experiment_by_name(project.experiment)
        runs = client.search_runs(
            [experiment.experiment_id] if experiment else [],
            f"attributes.start_time >= {since_ms} and attributes.status = 'FAILED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    except MlflowException:
        return None
    return runs[0].info.run_id if runs else None


# -- automatic rollback -------------------------------------------------------------------


def check_rollback(project: Project, accuracy_history: Sequence[AccuracyRow]) -> Decision | None:
    """Judge the latest promotion once its champion has `retrain.rollback.window` online errors
    per step since it was promoted: roll back if its rolling MAE exceeds the previous
    champion's latest by `retrain.rollback.margin`, else keep it. Both are recorded; None when
    there is nothing to judge yet (no promotion over a previous champion, too few errors, no
    online figures of the previous champion, or this promotion was judged already)."""
    cfg = project.settings.retrain.rollback
    if not cfg.enabled:
        return None
    client = registry.connect(project)
    name = project.settings.model.name
    champion = registry.version_for_alias(client, name, registry.CHAMPION)
    history = registry.champion_history(client, name)
    if champion is None or not history or history[-1] != champion:
        return None
    earlier = [v for v in history[:-1] if v != champion]
    if not earlier:
        return None
    previous = earlier[-1]
    tags = client.get_model_version(name, str(champion)).tags
    promoted_at = tags.get(promotion.PROMOTED_AT)
    if not promoted_at or tags.get(promotion.ROLLBACK_CHECKED) == promoted_at:
        return None
    since = datetime.fromisoformat(promoted_at).astimezone(UTC).replace(tzinfo=None)
    overall = [r for r in accuracy_history if r.step == ALL_STEPS]
    new = max((r for r in overall if r.model_version == champion and r.at >= since), key=_at, default=None)
    old = max((r for r in overall if r.model_version == previous), key=_at, default=None)
    if new is None or old is None or new.n < cfg.window:
        return None
    worse = new.mae > old.mae * (1 + cfg.margin)
    figures: dict[str, decisions.Figure] = {
        "online_mae": new.mae,
        "n": new.n,
        "previous_online_mae": old.mae,
        "previous_n": old.n,
        "margin": cfg.margin,
    }
    client.set_model_version_tag(name, str(champion), promotion.ROLLBACK_CHECKED, promoted_at)
    if worse:
        promotion.rollback(project, record=False)
    d = Decision(
        kind="rollback",
        outcome="rolled_back" if worse else "kept",
        reason=f"online MAE {new.mae:.4f} of v{champion} {'>' if worse else '≤'} v{previous} "
        f"{old.mae:.4f} × {1 + cfg.margin:g} over {new.n} errors per step since its promotion",
        version=champion,
        champion=previous if worse else champion,
        previous=champion if worse else previous,
        trigger="online_accuracy",
        figures=figures,
    )
    decisions.record(client, name, d)
    return d


def _at(row: AccuracyRow) -> datetime:
    return row.at


def snapshot_rows(snapshot: Mapping[str, Any], at: datetime) -> list[AccuracyRow]:
    """A monitor snapshot's overall accuracy as history rows stamped `at`."""
    event_time = snapshot.get("event_time")
    when = datetime.fromisoformat(event_time) if event_time else None
    return [
        AccuracyRow(at, when, int(f["model_version"]), ALL_STEPS, float(f["mae"]), int(f["n"]))
        for f in snapshot.get("accuracy") or []
        if f.get("mae") is not None
    ]


# -- the loop's entry point ---------------------------------------------------------------


class Retrainer:
    """What a long-running process (the demo, a stream worker's side thread) calls with the
    monitor's figures: rollback check first, then the triggers, at most one retrain per
    `retrain.cooldown`. Thread-safe; a retrain blocks the calling thread for its duration."""

    def __init__(self, project: Project, *, history: MonitorHistory | None = None):
        self.project = project
        self.settings = project.settings.retrain
        self.history = history
        self.triggers = triggers.build(project)
        self.cooldown = _timedelta(self.settings.cooldown)
        self.last_attempt: datetime | None = None
        self._backtest_mae: dict[int, float | None] = {}
        self._lock = threading.Lock()

    def maybe_retrain(self, monitor_snapshot: Mapping[str, Any]) -> Decision | None:
        """Act on the monitor's current figures: a rollback decision, a retrain decision, or
        None when nothing is due."""
        with self._lock:
            now = utcnow()
            rows = snapshot_rows(monitor_snapshot, now)
            if self.history is not None:
                rows += self.history.latest_accuracy()
            judged = check_rollback(self.project, rows)
            if judged is not None:
                return judged
            context = self._context(now)
            last = max((t for t in (self.last_attempt, context.last_retrain_attempt) if t), default=None)
            if last is not None and now - last < self.cooldown:
                return None
            for trigger in self.triggers:
                hit = trigger.check(monitor_snapshot, context)
                if hit is None:
                    continue
                self.last_attempt = now
                return retrain(
                    self.project,
                    mode=hit.mode,
                    reason=hit.reason,
                    trigger=hit.trigger,
                    figures={f"trigger_{k}": v for k, v in hit.figures.items()},
                )
            return None

    def _context(self, now: datetime) -> triggers.TriggerContext:
        client = registry.connect(self.project)
        name = self.project.settings.model.name
        champion = registry.version_for_alias(client, name, registry.CHAMPION)
        if champion is not None and champion not in self._backtest_mae:
            run_id = client.get_model_version(name, str(champion)).run_id
            metrics = client.get_run(run_id).data.metrics if run_id else {}
            self._backtest_mae[champion] = metrics.get("lstm_mae")
        retrains = [d for d in decisions.history(client, name) if d.kind == "retrain"]
        automatic = [d for d in retrains if d.trigger != "manual"]
        last = _utc(retrains[-1].at) if retrains else None
        attempted = _utc(automatic[-1].at) if automatic else None
        if last is None and champion is not None:
            created = client.get_model_version(name, str(champion)).creation_timestamp
            last = datetime.fromtimestamp(created / 1000, UTC).replace(tzinfo=None)
        return triggers.TriggerContext(
            champion=champion,
            backtest_mae=None if champion is None else self._backtest_mae[champion],
            last_retrain=last,
            now=now,
            last_retrain_attempt=attempted,
        )


def _utc(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone(UTC).replace(tzinfo=None)


def _timedelta(text: str) -> timedelta:
    return pd.Timedelta(text).to_pytimedelta()
