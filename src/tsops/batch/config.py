"""The batch job file (`tsops batch --config batch.yaml`), validated with pydantic.

```yaml
model: {uri: models:/weather@champion}
data:
  source: {type: parquet, params: {path: input.parquet}}
  target: {type: parquet, params: {path: predictions.parquet}}
engine: local
```

Every problem is reported at once, each by its field path (`data.source.params.path: ...`),
as one ConfigError (exit code 2). Relative paths are relative to the job file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tsops.batch.plugins import BatchContext, Plugin, resolve
from tsops.errors import ConfigError
from tsops.settings import Strict


class PluginSpec(Strict):
    type: str = Field(min_length=1, description="registry name or pkg.module:Class")
    params: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(Strict):
    uri: str = Field(min_length=1, description="any MLflow model URI: models:/, runs:/, a path")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; default: the project's, else MLFLOW_TRACKING_URI"
    )


class DataSpec(Strict):
    source: PluginSpec
    target: PluginSpec


class RejectsSpec(Strict):
    policy: Literal["fail", "skip"] = Field(
        "fail", description="fail: the first rejected row stops the run; skip: write it to `path`"
    )
    path: str | None = Field(None, description="rejects file (.parquet or .csv); required with skip")

    @field_validator("path")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and Path(v).suffix.lower() not in (".parquet", ".csv"):
            raise ValueError("must end in .parquet or .csv")
        return v

    @model_validator(mode="after")
    def _path_with_skip(self) -> RejectsSpec:
        if self.policy == "skip" and not self.path:
            raise ValueError("policy skip needs a rejects path (rejected rows are never dropped)")
        return self


class SparkSpec(Strict):
    master: str = Field("local[2]", description="Spark master URL")
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict, description="more Spark settings")
    staging_dir: str | None = Field(
        None, description="folder for intermediate Parquet; on a cluster a path all nodes share"
    )


class BatchConfig(Strict):
    project: str | None = Field(None, description="tsops project folder (feast/entities sources, tracking)")
    model: ModelSpec
    data: DataSpec
    engine: Literal["local", "spark"] = "local"
    chunk_rows: int = Field(100_000, ge=1, le=50_000_000, description="rows per Arrow record batch")
    threads: int = Field(
        1, ge=1, le=64, description="local engine: chunks scored at once (thread-safe models only)"
    )
    keep: Literal["all", "none"] | list[str] = Field(
        "all", description="input columns copied next to the predictions"
    )
    rejects: RejectsSpec = RejectsSpec()
    spark: SparkSpec = SparkSpec()


@dataclass
class Job:
    """A validated job: its settings, resolved plugins and context."""

    config: BatchConfig
    source: Plugin
    target: Plugin
    context: BatchContext
    source_file: str

    @property
    def rejects_path(self) -> Path | None:
        path = self.config.rejects.path
        return self.context.path(path) if path else None


def _format(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown field (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
        out.append(f"{loc}: {msg}")
    return out


def validate(raw: Any, source: str, base_dir: Path, project_dir: str | Path | None = None) -> Job:
    """Validate a parsed job file; ConfigError lists every problem with its field path."""
    from tsops.batch import sources, targets

    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping with model, data and engine", source)
    problems: list[str] = []
    config: BatchConfig | None = None
    try:
        config = BatchConfig.model_validate(raw)
        data = config.data
    except ValidationError as e:
        problems += _format(e)
        try:  # still check the plugins, so every problem is reported in one go
            data = DataSpec.model_validate(raw.get("data"))
        except ValidationError:
            data = None
    src = tgt = None
    if data is not None:
        src, src_problems = resolve(
            "source", sources.SOURCES, ("batches",), data.source.type, data.source.params, "data.source"
        )
        tgt, tgt_problems = resolve(
            "target",
            targets.TARGETS,
            ("open", "write", "commit", "abort"),
            data.target.type,
            data.target.params,
            "data.target",
        )
        problems += src_problems + tgt_problems
    if problems or config is None or src is None or tgt is None:
        raise ConfigError(f"invalid batch job ({len(problems)} problem(s))", source, problems)
    project = project_dir if project_dir is not None else config.project
    context = BatchContext(
        base_dir=base_dir,
        project_dir=(base_dir / Path(project).expanduser()).resolve() if project is not None else None,
        chunk_rows=config.chunk_rows,
    )
    return Job(config, src, tgt, context, source)


def load(path: str | Path, project_dir: str | Path | None = None) -> Job:
    """Read and validate a job file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("batch job file not found", str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", str(path)) from None
    return validate(raw, str(path), path.resolve().parent, project_dir)
