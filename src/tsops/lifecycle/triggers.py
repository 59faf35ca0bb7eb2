"""Retrain triggers: one small interface, a registry by name, selected by `retrain.triggers`.

A trigger looks at the monitor's current figures (`StreamMonitor.snapshot()`) and the
champion's context, and says why a retrain is due (or nothing). The policy's `mode` per trigger
says how to retrain: warm start or from scratch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pandas as pd

from tsops.errors import ConfigError
from tsops.monitoring.drift import monitored_columns
from tsops.settings import (
    AccuracyTriggerSettings,
    DriftTriggerSettings,
    Project,
    RetrainMode,
    ScheduleTriggerSettings,
)


@dataclass(frozen=True)
class TriggerContext:
    champion: int | None
    backtest_mae: float | None  # the champion's training backtest MAE (run metric `lstm_mae`)
    last_retrain: datetime | None  # naive UTC, any retrain; the champion's registration if none
    now: datetime  # naive UTC
    last_retrain_attempt: datetime | None = None  # the latest automatic retrain, failed ones too


@dataclass(frozen=True)
class TriggerHit:
    trigger: str
    mode: RetrainMode
    reason: str
    figures: dict[str, float | int | str | None]


class Trigger(Protocol):
    name: str
    mode: RetrainMode

    def check(self, snapshot: Mapping[str, Any], context: TriggerContext) -> TriggerHit | None:
        """Why a retrain is due now, or None."""
        ...


def champion_accuracy(snapshot: Mapping[str, Any], champion: int | None) -> dict[str, Any] | None:
    for figure in snapshot.get("accuracy") or []:
        if figure.get("model_version") == champion:
            return dict(figure)
    return None


class DriftTrigger:
    name = "drift"

    def __init__(self, settings: DriftTriggerSettings, target: str):
        self.settings = settings
        self.mode: RetrainMode = settings.mode
        self.columns = settings.columns or [target]

    def check(self, snapshot: Mapping[str, Any], context: TriggerContext) -> TriggerHit | None:
        drift = snapshot.get("drift") or {}
        # Only the champion's own reference counts: after a promotion the monitor switches to
        # the new champion's reference once its forecasts arrive.
        if drift.get("reference_version") != context.champion:
            return None
        scores = drift.get("scores") or {}
        watched = [(scores[c]["score"], c, scores[c]["n"]) for c in self.columns if c in scores]
        if not watched:
            return None
        score, feature, rows = max(watched)
        if rows < self.settings.min_rows or score < self.settings.threshold:
            return None
        return TriggerHit(
            self.name,
            self.mode,
            f"drift PSI {score:.3f} on {feature} ≥ {self.settings.threshold} over {rows} observations",
            {"psi": score, "feature": feature, "rows": rows, "threshold": self.settings.threshold},
        )


class AccuracyTrigger:
    name = "accuracy"

    def __init__(self, settings: AccuracyTriggerSettings, target: str):
        self.settings = settings
        self.mode: RetrainMode = settings.mode

    def check(self, snapshot: Mapping[str, Any], context: TriggerContext) -> TriggerHit | None:
        figure = champion_accuracy(snapshot, context.champion)
        if figure is None or figure.get("mae") is None or context.backtest_mae is None:
            return None
        if figure["n"] < self.settings.min_samples:
            return None
        limit = context.backtest_mae * (1 + self.settings.margin)
        if figure["mae"] <= limit:
            return None
        return TriggerHit(
            self.name,
            self.mode,
            f"online MAE {figure['mae']:.4f} of v{context.champion} > backtest MAE "
            f"{context.backtest_mae:.4f} × {1 + self.settings.margin:g} over {figure['n']} errors per step",
            {
                "online_mae": figure["mae"],
                "backtest_mae": context.backtest_mae,
                "margin": self.settings.margin,
                "n": figure["n"],
            },
        )


class ScheduleTrigger:
    name = "schedule"

    def __init__(self, settings: ScheduleTriggerSettings, target: str):
        self.settings = settings
        self.mode: RetrainMode = settings.mode
        self.interval = pd.Timedelta(settings.interval).to_pytimedelta()

    def check(self, snapshot: Mapping[str, Any], context: TriggerContext) -> TriggerHit | None:
        if context.last_retrain is None or context.now - context.last_retrain < self.interval:
            return None
        return TriggerHit(
            self.name,
            self.mode,
            f"scheduled: last retrain {context.last_retrain.isoformat(timespec='seconds')}, "
            f"interval {self.settings.interval}",
            {"last_retrain": context.last_retrain.isoformat(), "interval": self.settings.interval},
        )


TriggerFactory = Callable[[Any, str], Trigger]  # (its settings, the project's target column)

TRIGGERS: dict[str, TriggerFactory] = {
    "drift": DriftTrigger,
    "accuracy": AccuracyTrigger,
    "schedule": ScheduleTrigger,
}


def register(name: str, factory: TriggerFactory) -> None:
    """Add a trigger kind (its settings model must carry `type: name`)."""
    TRIGGERS[name] = factory


def build(project: Project) -> list[Trigger]:
    """The configured triggers, in the order of `retrain.triggers`; a drift trigger's columns
    must be monitored ones."""
    monitored = monitored_columns(project)
    for i, t in enumerate(project.settings.retrain.triggers):
        unknown = [c for c in getattr(t, "columns", None) or [] if c not in monitored]
        if unknown:
            raise ConfigError(
                f"{unknown} are not monitored; monitored columns are {monitored}",
                f"retrain.triggers.{i}.columns",
            )
    target = project.settings.series.target
    return [TRIGGERS[t.type](t, target) for t in project.settings.retrain.triggers]
