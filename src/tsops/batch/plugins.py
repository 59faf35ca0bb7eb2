"""How batch plugins are found and configured.

A plugin is a class named in the job file either by its registry name (`parquet`) or by
import path (`my_pkg.module:MyTarget`). It is built as ``cls(params, context)``: `params` is
an instance of the class's own pydantic `Params` model when it has one (so a bad parameter
is refused with its field path before any work starts), else the raw mapping.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from tsops.errors import ConfigError

if TYPE_CHECKING:
    from tsops.settings import Project


@dataclass
class BatchContext:
    """What a plugin may need besides its parameters: where relative paths start, the tsops
    project (for the feature store and Kafka defaults), the chunk size, the run id."""

    base_dir: Path
    project_dir: Path | None = None
    chunk_rows: int = 100_000
    run_id: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def path(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @cached_property
    def project(self) -> Project:
        from tsops.settings import Project

        if self.project_dir is None:
            raise ConfigError("this plugin needs a tsops project: set `project: DIR` in the job", "project")
        return Project.load(self.project_dir)


@dataclass(frozen=True)
class Plugin:
    """A resolved plugin: its class and its validated parameters."""

    name: str
    cls: type
    params: Any

    def build(self, context: BatchContext) -> Any:
        return self.cls(self.params, context)


def import_class(spec: str) -> type:
    """`pkg.module:Class` → the class; ValueError says what is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is neither a known name nor an import path `pkg.module:Class`")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name!r}: {e}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, type):
        raise ValueError(f"{spec!r} is not a class")
    return obj


def resolve(
    family: str,
    registry: dict[str, type],
    required: tuple[str, ...],
    type_name: str,
    params: dict[str, Any],
    where: str,
) -> tuple[Plugin | None, list[str]]:
    """Find the class and validate its params; returns (plugin, problems as 'path: reason')."""
    if type_name in registry:
        cls = registry[type_name]
    else:
        if ":" not in type_name:
            known = ", ".join(sorted(registry))
            return None, [f"{where}.type: unknown {family} {type_name!r}; known: {known} or pkg.module:Class"]
        try:
            cls = import_class(type_name)
        except ValueError as e:
            return None, [f"{where}.type: {e}"]
        lacking = [m for m in required if not callable(getattr(cls, m, None))]
        if lacking:
            return None, [f"{where}.type: {type_name} is not a {family} (it lacks {', '.join(lacking)})"]
    schema: type[BaseModel] | None = getattr(cls, "Params", None)
    if schema is None:
        return Plugin(type_name, cls, dict(params)), []
    try:
        return Plugin(type_name, cls, schema.model_validate(params)), []
    except ValidationError as e:
        return None, [f"{_loc(where + '.params', err['loc'])}: {_msg(err)}" for err in e.errors()]


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    return ".".join([prefix, *(str(p) for p in loc)])


def _msg(err: Any) -> str:
    return "unknown parameter (typo?)" if err["type"] == "extra_forbidden" else str(err["msg"])
