"""The `tune.space` settings as Optuna suggestions, and a trial's parameters as model settings.

Every tuned parameter is a `model` field, so a trial's parameters are a `model` override: the
same override `tsops train --from-study` applies through the one training path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tsops.settings import FloatParam, IntParam, SearchSpace, Settings, validate

if TYPE_CHECKING:
    import optuna

Spec = IntParam | FloatParam


def resolve(space: SearchSpace, features_window: int) -> dict[str, Spec]:
    """The tuned parameters with every bound filled in (`input_window` defaults to the last
    quarter up to all of the ingested window)."""
    specs = space.tuned()
    window = specs.get("input_window")
    if isinstance(window, IntParam) and window.choices is None:
        low = window.low if window.low is not None else max(1, features_window // 4)
        high = window.high if window.high is not None else features_window
        specs["input_window"] = window.model_copy(update={"low": min(low, high), "high": high})
    return specs


def suggest(trial: optuna.Trial, specs: Mapping[str, Spec]) -> dict[str, Any]:
    """Ask the trial for a value of every tuned parameter."""
    params: dict[str, Any] = {}
    for name, spec in specs.items():
        if spec.choices is not None:
            params[name] = trial.suggest_categorical(name, list(spec.choices))
        elif isinstance(spec, IntParam):
            assert spec.low is not None and spec.high is not None
            params[name] = trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
        else:
            assert spec.low is not None and spec.high is not None
            params[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    return params


def grid(specs: Mapping[str, Spec]) -> dict[str, list[Any]]:
    """The grid sampler's space (settings validation made sure every parameter has choices)."""
    return {name: list(spec.choices or []) for name, spec in specs.items()}


def contains(spec: Spec, value: Any) -> bool:
    if spec.choices is not None:
        return value in spec.choices
    assert spec.low is not None and spec.high is not None
    if not spec.low <= value <= spec.high:
        return False
    return not isinstance(spec, IntParam) or (value - spec.low) % spec.step == 0


def defaults_in_space(settings: Settings, specs: Mapping[str, Spec]) -> dict[str, Any]:
    """The current model settings of the tuned parameters that lie inside the space (the rest
    is left to the sampler): a new study's first trial, so tuning starts from what you have."""
    model = settings.model
    current = {name: getattr(model, name) for name in specs}
    if "input_window" in current and current["input_window"] is None:
        current["input_window"] = settings.features.window
    return {name: value for name, value in current.items() if contains(specs[name], value)}


def apply(settings: Settings, params: Mapping[str, Any], source: str) -> Settings:
    """The settings with `model` fields overridden by a trial's parameters, validated as if
    they had been written in tsops.yaml (a ConfigError names the field and `source`)."""
    raw = settings.model_dump(by_alias=True)
    raw["model"] = {**raw["model"], **params}
    return validate(raw, source)
