"""Gated alias moves. The challenger becomes champion only if it beats the champion's MAE on
the same backtest window, both re-evaluated now on the project's current data. Every move and
refusal is recorded in the decision log (`lifecycle/decisions.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlflow import MlflowClient

from tsops import registry
from tsops.errors import ModelError
from tsops.features.store import FeatureStoreClient
from tsops.lifecycle import decisions
from tsops.models import backtest, dataset
from tsops.settings import Project

PROMOTED_AT = "tsops.promoted_at"
ROLLBACK_CHECKED = "tsops.rollback_checked"  # the promotion time whose online accuracy was judged


@dataclass
class PromotionDecision:
    promoted: bool
    version: int
    previous: int | None
    reason: str
    challenger_mae: float | None = None
    champion_mae: float | None = None


def _compare(project: Project, challenger: int, champion: int) -> tuple[float, float, str]:
    model = project.settings.model
    store = FeatureStoreClient(project)
    data = dataset.build(store, model.horizon)
    names = store.features.names

    def predictor(version: int) -> backtest.Predictor:
        pyfunc = registry.load(project, version=version)
        return lambda features: pyfunc.predict(features[names]).to_numpy()

    predictors = {str(v): predictor(v) for v in (challenger, champion)}
    report = backtest.run(data, predictors, model.horizon, model.main_season)
    window = f"{data.test_window[0]}..{data.test_window[1]}"
    return report.overall[str(challenger)]["mae"], report.overall[str(champion)]["mae"], window


def promote(
    project: Project, version: int | None = None, *, force: bool = False, record: bool = True
) -> PromotionDecision:
    """Move `champion` to `version` (default: the `challenger`) if it passes the gate.
    `record=False` leaves the decision log to the caller (a retrain records one decision)."""
    decision = _promote(project, version, force=force)
    if record:
        _record(project, decision, "promote", "manual" if not force else "forced")
    return decision


def _record(project: Project, d: PromotionDecision, kind: str, trigger: str) -> None:
    figures = {"challenger_mae": d.challenger_mae, "champion_mae": d.champion_mae}
    if kind == "promote" and not d.promoted and d.previous == d.version:
        return  # "already champion": nothing was decided
    if kind == "rollback":  # d.version is the restored champion, d.previous the rolled-back one
        outcome, about = "rolled_back", d.previous
    else:
        outcome, about = ("promoted" if d.promoted else "rejected"), d.version
    decisions.record(
        registry.connect(project),
        project.settings.model.name,
        decisions.Decision(
            kind=kind,
            outcome=outcome,
            reason=d.reason,
            version=about,
            champion=d.version if d.promoted else d.previous,
            previous=d.previous,
            trigger=trigger,
            figures={k: v for k, v in figures.items() if v is not None},
        ),
    )


def _promote(project: Project, version: int | None, *, force: bool) -> PromotionDecision:
    client = registry.connect(project)
    name = project.settings.model.name
    candidate = version or registry.version_for_alias(client, name, registry.CHALLENGER)
    if candidate is None:
        raise ModelError("no challenger to promote; run `tsops train` first", name)
    try:
        client.get_model_version(name, str(candidate))
    except Exception:
        raise ModelError(f"version {candidate} does not exist", f"{name}/{candidate}") from None
    current = registry.version_for_alias(client, name, registry.CHAMPION)
    if current == candidate:
        return PromotionDecision(False, candidate, current, "already champion")
    if not force and project.settings.retrain.gate_beats_best_baseline:
        refused = _short_of_best_baseline(client, name, candidate)
        if refused:
            client.set_model_version_tag(name, str(candidate), "tsops.gate_rejected", refused)
            return PromotionDecision(False, candidate, current, refused)
    if current is None:
        registry.move_champion(client, name, candidate, "first model")
        return PromotionDecision(True, candidate, None, "first model")
    if force:
        registry.move_champion(client, name, candidate, "forced", forced="true", forced_over=str(current))
        return PromotionDecision(True, candidate, current, "forced (gate skipped)")
    new_mae, old_mae, window = _compare(project, candidate, current)
    if new_mae < old_mae:
        reason = f"backtest MAE {new_mae:.4f} < champion v{current} {old_mae:.4f} on {window}"
        registry.move_champion(
            client, name, candidate, reason, gate_mae=repr(new_mae), gate_champion_mae=repr(old_mae)
        )
        return PromotionDecision(True, candidate, current, reason, new_mae, old_mae)
    reason = f"backtest MAE {new_mae:.4f} ≥ champion v{current} {old_mae:.4f} on {window}"
    client.set_model_version_tag(name, str(candidate), "tsops.gate_rejected", reason)
    return PromotionDecision(False, candidate, current, reason, new_mae, old_mae)


def _short_of_best_baseline(client: MlflowClient, name: str, version: int) -> str | None:
    """Why `version` does not beat the best baseline of its own backtest, or None if it does."""
    mv = client.get_model_version(name, str(version))
    metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    ratio = metrics.get("lstm_vs_best_baseline")
    best = (mv.tags or {}).get("tsops.best_baseline", "the best baseline")
    if ratio is None:
        return f"v{version} has no baseline comparison in its training run (retrain it)"
    if ratio >= 1.0:
        return f"v{version} does not beat the best baseline ({best}): backtest MAE ratio {ratio:.3f} ≥ 1"
    return None


def rollback(project: Project, *, record: bool = True) -> PromotionDecision:
    """Move `champion` back to the version that held it before the current one. The restored
    version is marked as judged, so the automatic rollback check never undoes a rollback."""
    client = registry.connect(project)
    name = project.settings.model.name
    current = registry.version_for_alias(client, name, registry.CHAMPION)
    history = registry.champion_history(client, name)
    previous = [v for v in history[:-1] if v != current]
    if current is None or not previous:
        raise ModelError("nothing to roll back to: no earlier champion", name)
    target = previous[-1]
    client.set_registered_model_alias(name, registry.CHAMPION, str(target))
    client.set_model_version_tag(name, str(current), "tsops.rolled_back", "true")
    # The history drops the rolled-back entry, so a second rollback goes one further back.
    client.set_registered_model_tag(name, registry.HISTORY_TAG, json.dumps(history[:-1]))
    restored = client.get_model_version(name, str(target)).tags.get(PROMOTED_AT)
    if restored:
        client.set_model_version_tag(name, str(target), ROLLBACK_CHECKED, restored)
    decision = PromotionDecision(True, target, current, f"rolled back from v{current}")
    if record:
        _record(project, decision, "rollback", "manual")
    return decision
