"""`tsops init`: write a ready project (settings, data, generated Feast repo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tsops.data.history import infer_freq, read_table
from tsops.errors import ConfigError, DataError
from tsops.settings import CONFIG_FILE, Project, validate

EXAMPLES = ("weather", "synthetic")

_HEADER = """\
# tsops project. Every command reads this file (override any field with TSOPS_SECTION__FIELD).
# schema: the column names shared by history and stream events, and the series' interval.
# features: defined once, computed by the batch engine (training) and the stream engine alike.
"""


def _base(project: str, data_path: str, schema: dict[str, Any], model_name: str) -> dict[str, Any]:
    return {
        "version": 1,
        "project": project,
        "data": {"path": data_path},
        "schema": {**schema, "gaps": "interpolate", "duplicates": "last"},
        "features": {
            "window": 48,
            "lags": [168],
            "rolling": [24, 168],
            "calendar": ["hour", "dayofweek"],
        },
        "model": {"name": model_name, "horizon": 24, "season": 24},
        "backtest": {"holdout": 720, "stride": 24},
        "stores": {"online": {"type": "sqlite"}},
    }


def _write(root: Path, raw: dict[str, Any]) -> Project:
    settings = validate(raw, str(root / CONFIG_FILE))  # never write a project that cannot load
    (root / CONFIG_FILE).write_text(_HEADER + yaml.safe_dump(raw, sort_keys=False))
    return Project(root, settings)


def _prepare(root: Path) -> None:
    if (root / CONFIG_FILE).exists():
        raise ConfigError("a project already exists here; choose another folder", str(root / CONFIG_FILE))
    (root / "data").mkdir(parents=True, exist_ok=True)


def init_example(root: Path, example: str, *, entities: int = 50, seed: int = 42) -> Project:
    """Write the weather (real 2010 temperatures, two cities) or synthetic example project."""
    if example not in EXAMPLES:
        raise ConfigError(f"unknown example {example!r}; choose one of {list(EXAMPLES)}", "--example")
    _prepare(root)
    if example == "weather":
        from tsops.data.weather import load_weather

        load_weather().to_parquet(root / "data" / "history.parquet", index=False)
        raw = _base(
            "weather",
            "data/history.parquet",
            {"entity": "city", "time": "date", "target": "temp", "freq": "1h"},
            "weather",
        )
        raw["features"]["calendar"] = ["hour", "dayofweek", "dayofyear"]
        return _write(root, raw)

    from tsops.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(entities=entities, seed=seed)
    generate(spec).to_parquet(root / "data" / "history.parquet", index=False)
    raw = _base(
        "synthetic",
        "data/history.parquet",
        {"entity": "entity_id", "time": "timestamp", "target": "value", "freq": "1h"},
        "synthetic",
    )
    raw["data"]["synthetic"] = {
        "entities": entities,
        "start": spec.start,
        "periods": spec.periods,
        "seed": seed,
    }
    return _write(root, raw)


def init_from_data(
    root: Path,
    data: Path,
    *,
    time: str,
    target: str,
    entity: str | None = None,
    freq: str | None = None,
) -> Project:
    """Write a project for the user's own CSV or Parquet file (referenced, not copied)."""
    frame = read_table(data)
    missing = [c for c in (time, target, entity) if c and c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; the file has {list(frame.columns)}", str(data))
    freq = freq or infer_freq(frame, time, entity)
    _prepare(root)
    name = "".join(c if c.isalnum() else "_" for c in root.resolve().name.lower()).strip("_") or "project"
    if not name[0].isalpha():
        name = f"p_{name}"
    schema: dict[str, Any] = {"entity": entity, "time": time, "target": target, "freq": freq}
    if entity is None:
        schema.pop("entity")
    return _write(root, _base(name, str(data.resolve()), schema, name))
