"""`tsops init`: write a ready project (settings, data, generated Feast repo)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tsops import frequency
from tsops.data.history import clean_history, infer_freq, read_table, series_extent
from tsops.errors import ConfigError, DataError
from tsops.frequency import FrequencyDefaults
from tsops.settings import CONFIG_FILE, ModelSettings, Project, SeriesSettings, validate

EXAMPLES = ("weather", "synthetic")

_HEADER = """\
# tsops project. Every command reads this file (override any field with TSOPS_SECTION__FIELD).
# schema: the column names shared by history and stream events, and the series' interval.
# features: defined once, computed by the batch engine (training) and the stream engine alike.
"""


def _base(
    project: str, data_path: str, schema: dict[str, Any], model_name: str, defaults: FrequencyDefaults
) -> dict[str, Any]:
    derived = defaults.settings()
    return {
        "version": 1,
        "project": project,
        "data": {"path": data_path},
        "schema": {**schema, "gaps": "interpolate", "duplicates": "last"},
        "features": derived["features"],
        "model": {"name": model_name, **derived["model"]},
        "backtest": derived["backtest"],
        "stores": {"online": {"type": "sqlite"}},
    }


def _defaults(
    frame: pd.DataFrame,
    time: str,
    entity: str | None,
    freq: str,
    target: str,
    source: str = "history",
    **overrides: Any,
) -> FrequencyDefaults:
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    shortest, span = series_extent(frame, time, entity, step)
    defaults = frequency.derive(step, shortest=shortest, span=span, **overrides)
    series = SeriesSettings(entity=entity, time=time, target=target, freq=freq)
    return _fit_base_lags(defaults, frame, series, source)


# The base check reads at most this many entities, and origins per entity (evenly spaced).
BASE_CHECK_ENTITIES = 20
BASE_CHECK_ORIGINS = 1000


def _fit_base_lags(
    defaults: FrequencyDefaults, frame: pd.DataFrame, series: SeriesSettings, source: str
) -> FrequencyDefaults:
    """Keep `features.base_lags` only where the base they serve (two long cycles' profiles moved
    by the last main cycle's level) fits the history before the holdout better than every base
    without them, by training's own choice (`score_bases`) on origins there; otherwise they
    would lengthen every entity's state and online row for a base training never picks (hourly
    temperatures: yesterday's profile wins)."""
    if not defaults.base_lags:
        return defaults
    from tsops.models.lstm import level_adjusted_lags  # torch: only when there is a choice to make
    from tsops.models.training import best_base, score_bases

    history, _ = clean_history(frame, series, source)  # refuses what ingest would, naming the file
    lags = np.array(sorted({*range(defaults.window), *defaults.lags, *defaults.base_lags}))
    steps = np.arange(1, defaults.horizon + 1)
    rows, labels = [], []
    for _, group in islice(history.groupby(series.entity_col, sort=True), BASE_CHECK_ENTITIES):
        y = group[series.target].to_numpy(dtype=float)
        origins = np.arange(lags[-1], len(y) - defaults.holdout - defaults.horizon)
        if len(origins):
            origins = np.unique(origins[np.linspace(0, len(origins) - 1, BASE_CHECK_ORIGINS).astype(int)])
            rows.append(y[origins[:, None] - lags[None, :]])
            labels.append(y[origins[:, None] + steps[None, :]])
    model = ModelSettings(name="base_check", horizon=defaults.horizon, season=defaults.seasons)
    if not rows:  # derive leaves room for training origins; a history of gaps may not
        reasons = {**defaults.reasons, "base_lags": "[]: no origin before the holdout to check them on"}
        return replace(defaults, base_lags=[], reasons=reasons)
    features = pd.DataFrame(np.concatenate(rows), columns=[f"lag_{k}" for k in lags])
    scored = score_bases(features, np.concatenate(labels), model)
    only = {f"lag_{k}" for k in defaults.base_lags}
    uses = {
        b
        for b in scored
        if b.adjusted and only & set(level_adjusted_lags(model.horizon, b.season, b.seasons, b.steps))
    }
    with_them = min((scored[b] for b in uses), default=math.inf)
    without = min((v for b, v in scored.items() if b not in uses), default=math.inf)
    reasons = dict(defaults.reasons)
    if with_them < without:
        fit = f"MAE {with_them:.4g} against {without:.4g}"
        reasons["base_lags"] += f"; that base fits the history before the holdout best ({fit})"
        return replace(defaults, reasons=reasons)
    best = best_base(scored, model).describe()
    reasons["base_lags"] = (
        f"[]: the base they would serve fits the history before the holdout less well than {best} "
        f"(MAE {with_them:.4g} against {without:.4g})"
    )
    return replace(defaults, base_lags=[], reasons=reasons)


def _write(
    root: Path,
    raw: dict[str, Any],
    defaults: FrequencyDefaults,
    on_defaults: Callable[[FrequencyDefaults], None] | None,
) -> Project:
    settings = validate(raw, str(root / CONFIG_FILE))  # never write a project that cannot load
    why = "".join(f"#   {line}\n" for line in defaults.lines())
    header = (
        f"{_HEADER}# defaults derived from the {defaults.freq} frequency and the history's length:\n{why}"
    )
    (root / CONFIG_FILE).write_text(header + yaml.safe_dump(raw, sort_keys=False))
    if on_defaults is not None:
        on_defaults(defaults)
    return Project(root, settings)


def _prepare(root: Path) -> None:
    if (root / CONFIG_FILE).exists():
        raise ConfigError("a project already exists here; choose another folder", str(root / CONFIG_FILE))
    (root / "data").mkdir(parents=True, exist_ok=True)


def init_example(
    root: Path,
    example: str,
    *,
    entities: int = 50,
    seed: int = 42,
    on_defaults: Callable[[FrequencyDefaults], None] | None = None,
) -> Project:
    """Write the weather (real 2010 temperatures, two cities) or synthetic example project;
    its defaults follow the example's frequency like a user's data."""
    if example not in EXAMPLES:
        raise ConfigError(f"unknown example {example!r}; choose one of {list(EXAMPLES)}", "--example")
    _prepare(root)
    if example == "weather":
        from tsops.data.weather import load_weather

        history = load_weather()
        history.to_parquet(root / "data" / "history.parquet", index=False)
        defaults = _defaults(history, "date", "city", "1h", "temp")
        raw = _base(
            "weather",
            "data/history.parquet",
            {"entity": "city", "time": "date", "target": "temp", "freq": "1h"},
            "weather",
            defaults,
        )
        return _write(root, raw, defaults, on_defaults)

    from tsops.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(entities=entities, seed=seed)
    history = generate(spec)
    history.to_parquet(root / "data" / "history.parquet", index=False)
    defaults = _defaults(history, "timestamp", "entity_id", "1h", "value")
    raw = _base(
        "synthetic",
        "data/history.parquet",
        {"entity": "entity_id", "time": "timestamp", "target": "value", "freq": "1h"},
        "synthetic",
        defaults,
    )
    raw["data"]["synthetic"] = {
        "entities": entities,
        "start": spec.start,
        "periods": spec.periods,
        "seed": seed,
    }
    return _write(root, raw, defaults, on_defaults)


def init_from_data(
    root: Path,
    data: Path,
    *,
    time: str,
    target: str,
    entity: str | None = None,
    freq: str | None = None,
    season: list[float] | None = None,
    horizon: int | None = None,
    window: int | None = None,
    holdout: int | None = None,
    on_defaults: Callable[[FrequencyDefaults], None] | None = None,
) -> Project:
    """Write a project for the user's own CSV or Parquet file (referenced, not copied), with
    defaults derived from its frequency and length; the keyword arguments override them."""
    frame = read_table(data)
    missing = [c for c in (time, target, entity) if c and c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; the file has {list(frame.columns)}", str(data))
    freq = freq or infer_freq(frame, time, entity)
    defaults = _defaults(
        frame,
        time,
        entity,
        freq,
        target,
        str(data),
        season=season,
        horizon=horizon,
        window=window,
        holdout=holdout,
    )
    _prepare(root)
    name = "".join(c if c.isalnum() else "_" for c in root.resolve().name.lower()).strip("_") or "project"
    if not name[0].isalpha():
        name = f"p_{name}"
    schema: dict[str, Any] = {"entity": entity, "time": time, "target": target, "freq": freq}
    if entity is None:
        schema.pop("entity")
    return _write(root, _base(name, str(data.resolve()), schema, name, defaults), defaults, on_defaults)
