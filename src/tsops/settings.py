"""`tsops.yaml` as typed pydantic settings, read once at start.

Every section forbids unknown keys, so a typo is refused instead of silently ignored.
Environment variables override the file: ``TSOPS_MODEL__EPOCHS=3`` sets ``model.epochs``
(``__`` separates nesting levels; values are parsed as YAML scalars).
"""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import numpy as np
import pandas as pd
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tsops.errors import ConfigError

CONFIG_FILE = "tsops.yaml"
ENV_PREFIX = "TSOPS_"
SINGLE_SERIES_ENTITY = "series_id"  # entity column added when the data has none
SINGLE_SERIES_VALUE = "series"
MAX_EVENT_BYTES = 65_536  # stream.max_event_bytes: an observation event is ~100 bytes
MAX_EVENT_DEPTH = 32  # stream.max_event_depth: an event is a flat JSON object


def _duration(least: str | None) -> AfterValidator:
    """A pandas duration string ("90s", "12h", "7d"), at least zero ("≥0") or above zero (">0")."""

    def check(v: str) -> str:
        try:
            delta = pd.Timedelta(v)
        except ValueError as e:
            raise ValueError(f"not a duration ({e})") from None
        if least == ">0" and delta <= pd.Timedelta(0):
            raise ValueError("not a positive duration (must be positive)")
        if least == "≥0" and delta < pd.Timedelta(0):
            raise ValueError("not a duration (must not be negative)")
        return v

    return AfterValidator(check)


Duration = Annotated[str, _duration(None)]
NonNegativeDuration = Annotated[str, _duration("≥0")]
PositiveDuration = Annotated[str, _duration(">0")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class DriftSettings(Strict):
    at: str = Field(description="time from which the drift applies")
    level_shift: float = 0.0
    amplitude_scale: float = 1.0
    noise_scale: float = 1.0


class SyntheticSettings(Strict):
    """How the synthetic example's history was generated (kept so the stream can continue it)."""

    entities: int = Field(50, ge=1)
    start: str = "2024-01-01"
    periods: int = Field(24 * 120, ge=48)
    seed: int = 42
    drift: DriftSettings | None = None


class DataSettings(Strict):
    path: str = Field(description="history file (CSV or Parquet), relative to the project")
    format: Literal["csv", "parquet"] | None = None
    synthetic: SyntheticSettings | None = None
    conflicts: Literal["file", "store"] = Field(
        "file",
        description="re-ingest: an observation (entity, time) both in the file and in the offline "
        "store with different values takes the file's (file) or keeps the store's (store)",
    )

    @field_validator("path")
    @classmethod
    def _known_suffix(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class SeriesSettings(Strict):
    """Column names shared by history and stream events, and the series' regular interval."""

    entity: str | None = None
    time: str
    target: str
    freq: str = "1h"
    gaps: Literal["interpolate", "ffill", "refuse"] = "interpolate"
    duplicates: Literal["last", "first", "mean", "refuse"] = "last"
    valid_min: float | None = Field(None, description="a target below is an outlier (default: derived)")
    valid_max: float | None = Field(None, description="a target above is an outlier (default: derived)")
    outlier_spread: float | None = Field(
        10.0,
        gt=0,
        description="derived plausible range: the history's 1st-99th percentile band widened by this "
        "many band widths on each side; null: no derived range",
    )
    # The range `tsops ingest` derived from the history (recorded with the feature view; set
    # on the settings by `FeatureStoreClient.require_ingested`, so the stream's parse sees it).
    _derived_range: tuple[float, float] | None = PrivateAttr(None)

    @field_validator("freq")
    @classmethod
    def _valid_freq(cls, v: str) -> str:
        try:
            delta = pd.Timedelta(pd.tseries.frequencies.to_offset(v))
        except (ValueError, TypeError) as e:
            raise ValueError(f"not a pandas frequency ({e})") from None
        if delta <= pd.Timedelta(0):
            raise ValueError("must be a positive interval such as '1h' or '5min'")
        return v

    @model_validator(mode="after")
    def _ordered_range(self) -> SeriesSettings:
        if self.valid_min is not None and self.valid_max is not None and self.valid_min >= self.valid_max:
            raise ValueError(f"valid_min ({self.valid_min}) must be below valid_max ({self.valid_max})")
        return self

    @model_validator(mode="after")
    def _distinct_columns(self) -> SeriesSettings:
        cols = [c for c in (self.entity, self.time, self.target) if c]
        if len(set(cols)) != len(cols):
            raise ValueError(f"entity, time and target must be different columns, got {cols}")
        return self

    @property
    def entity_col(self) -> str:
        return self.entity or SINGLE_SERIES_ENTITY

    @property
    def plausible_range(self) -> tuple[float, float] | None:
        """The target values taken as real observations: `valid_min`/`valid_max` where set,
        else the range derived from the history (None: no check)."""
        derived = self._derived_range if self.outlier_spread is not None else None
        low = self.valid_min if self.valid_min is not None else (derived[0] if derived else None)
        high = self.valid_max if self.valid_max is not None else (derived[1] if derived else None)
        if low is None and high is None:
            return None
        return (-math.inf if low is None else low, math.inf if high is None else high)

    def derive_range(self, values: np.ndarray) -> tuple[float, float] | None:
        """The plausible range from history `values`: the 1st-99th percentile band, widened by
        `outlier_spread` band widths each side (a band of zero width: by the level instead)."""
        finite = values[np.isfinite(values)]
        if self.outlier_spread is None or not len(finite):
            return None
        low, high = (float(q) for q in np.quantile(finite, [0.01, 0.99]))
        width = (high - low) or max(abs(high), 1.0)
        return low - self.outlier_spread * width, high + self.outlier_spread * width

    def use_derived_range(self, derived: tuple[float, float] | None) -> None:
        self._derived_range = derived

    @property
    def derived_range(self) -> tuple[float, float] | None:
        return self._derived_range

    @cached_property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(self.freq))


CalendarTerm = Literal["minuteofday", "hour", "dayofweek", "dayofyear", "month"]


class FeatureSettings(Strict):
    """The one feature definition used by batch and stream engines."""

    window: int = Field(48, ge=2, le=1024, description="model input: the last W observations")
    lags: list[int] = Field(default_factory=lambda: [168], description="extra lags beyond the window")
    base_lags: list[int] = Field(
        default_factory=list,
        description="lags only the LSTM's base reads (two seasons' profiles and their levels), not its "
        "network: they lengthen the lookback without widening the network's input",
    )
    rolling: list[int] = Field(default_factory=lambda: [24, 168], description="rolling mean/std sizes")
    calendar: list[CalendarTerm] = Field(
        default_factory=lambda: cast(list[CalendarTerm], ["hour", "dayofweek"])
    )
    ttl_steps: int = Field(
        2, ge=1, description="historical joins use a feature row at most this many steps old"
    )

    @field_validator("lags", "base_lags", "rolling")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [x for x in v if x < 1]
        if bad:
            raise ValueError(f"must be positive step counts, got {bad}")
        return sorted(set(v))

    @field_validator("rolling")
    @classmethod
    def _rolling_at_least_two(cls, v: list[int]) -> list[int]:
        if any(x < 2 for x in v):
            raise ValueError("rolling windows need at least 2 observations (std)")
        return v


class ModelSettings(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    horizon: int = Field(24, ge=1, le=1000)
    season: float | list[float] = Field(
        24,
        description="seasonal period(s) in steps, main first (e.g. [24, 168], 52.18); the seasonal "
        "naive, MASE and the LSTM's base use the main one rounded, MSTL all of them",
    )
    hidden_size: int = Field(64, ge=4, le=1024)
    num_layers: int = Field(1, ge=1, le=4)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    learning_rate: float = Field(2e-3, gt=0.0, allow_inf_nan=False)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(30, ge=1)
    quick_epochs: int = Field(8, ge=1)
    patience: int = Field(5, ge=1, description="early-stopping patience in epochs")
    threads: int = Field(2, ge=1)
    seed: int = 0
    weight_average: float = Field(
        0.99,
        ge=0.0,
        lt=1.0,
        description="decay of an exponential moving average of the weights after every step, which "
        "validation scores and training keeps instead of the last step's weights; 0: off",
    )
    ensemble: int = Field(
        1,
        ge=1,
        le=16,
        description="networks trained from seeds seed, seed+1, ...; the forecast averages their "
        "corrections (less variance; training and each forecast cost N times one network's)",
    )
    input_window: int | None = Field(
        None, ge=1, le=1024, description="LSTM input: the last N window steps; default all of features.window"
    )

    base: Literal["auto", "seasonal", "level_adjusted"] = Field(
        "auto",
        description="what the LSTM corrects: the seasonal naive at the best season (the last value "
        "among them: a season of one step), plain or moved to "
        "the current level (one or two seasons' profiles, each moved by the level difference over "
        "the last 1 or 3 steps, or over the last main cycle for a longer season); auto keeps the one "
        "with the lowest training MAE",
    )
    interval_levels: list[float] = Field(
        default_factory=lambda: [80.0, 95.0],
        description="prediction interval levels in percent (conformal, per horizon step); [] for none",
    )

    @field_validator("interval_levels")
    @classmethod
    def _levels_in_percent(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not 0 < x < 100]
        if bad:
            raise ValueError(f"levels are percentages between 0 and 100, got {bad}")
        return sorted(set(v))

    @field_validator("season")
    @classmethod
    def _seasons_at_least_one_step(cls, v: float | list[float]) -> float | list[float]:
        values = v if isinstance(v, list) else [v]
        if not values:
            raise ValueError("give at least one period")
        bad = [s for s in values if not (s >= 1 and s < 1e6)]
        if bad:
            raise ValueError(f"periods must be at least one step, got {bad}")
        return v

    @property
    def seasons(self) -> list[float]:
        """Every seasonal period, main first."""
        return [float(s) for s in self.season] if isinstance(self.season, list) else [float(self.season)]

    @property
    def main_season(self) -> int:
        """The main period in whole steps: the seasonal naive's lag and MASE's scale."""
        return round(self.seasons[0])


StatisticalBaseline = Literal["autoets", "autotheta", "mstl"]


class BacktestSettings(Strict):
    holdout: int = Field(24 * 30, ge=1, description="steps per entity held out at the tail")
    stride: int = Field(23, ge=1, description="steps between rolling forecast origins")
    validation: float = Field(0.1, gt=0.0, lt=0.5, description="share of training origins for early stopping")
    baselines: list[StatisticalBaseline] = Field(
        default_factory=lambda: cast(list[StatisticalBaseline], ["autoets", "autotheta", "mstl"]),
        description="statsforecast models backtested beside the LSTM on the same origins (empty: none)",
    )
    baseline_window: int = Field(
        360, ge=4, description="steps of history each statistical baseline refits on at every origin"
    )
    baseline_jobs: int = Field(
        0,
        ge=0,
        description="processes fitting the statistical baselines (0: one per core; 1: in training's own)",
    )


def _within_model_bounds(param: str, value: float, what: str) -> None:
    """A search-space bound obeys the same constraints as the `model` field it tunes."""
    field = ModelSettings.model_fields[param]
    try:
        bounded = Annotated[field.annotation, *field.metadata]  # type: ignore[name-defined]
        TypeAdapter(bounded).validate_python(value)
    except ValidationError as e:
        raise ValueError(f"{what} {value!r}: {e.errors()[0]['msg']} (as model.{param})") from None


class IntParam(Strict):
    """An integer hyperparameter: a range `low`..`high` (with `step` or `log`) or `choices`."""

    low: int | None = None
    high: int | None = None
    step: int = Field(1, ge=1)
    log: bool = False
    choices: list[int] | None = None


class FloatParam(Strict):
    """A real hyperparameter: a range `low`..`high` (uniform, or `log`) or `choices`."""

    low: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)
    log: bool = False
    choices: list[float] | None = None


class SearchSpace(Strict):
    """What `tsops tune` searches: each key a `model` field; null keeps the model setting."""

    input_window: IntParam | None = Field(
        IntParam(), description="low/high default to features.window // 4 and features.window"
    )
    hidden_size: IntParam | None = IntParam(low=16, high=128, log=True)
    num_layers: IntParam | None = IntParam(low=1, high=2)
    dropout: FloatParam | None = FloatParam(low=0.0, high=0.3)
    learning_rate: FloatParam | None = FloatParam(low=3e-4, high=1e-2, log=True)
    batch_size: IntParam | None = IntParam(low=32, high=256, log=True)
    epochs: IntParam | None = IntParam(low=5, high=30)

    @field_validator("*")
    @classmethod
    def _valid_param(cls, spec: IntParam | FloatParam | None, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        if spec is None:
            return spec
        if spec.choices is not None:
            if spec.low is not None or spec.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not spec.choices:
                raise ValueError("empty choices")
            for value in spec.choices:
                _within_model_bounds(name, value, "choice")
            return spec
        if (spec.low is None or spec.high is None) and name != "input_window":
            raise ValueError("give low and high, or choices")
        if spec.low is not None and spec.high is not None and spec.low > spec.high:
            raise ValueError(f"empty range: low {spec.low} > high {spec.high}")
        for what in ("low", "high"):
            if getattr(spec, what) is not None:
                _within_model_bounds(name, getattr(spec, what), what)
        if spec.log and isinstance(spec, IntParam) and spec.step != 1:
            raise ValueError("log and step cannot be combined")
        if spec.log and spec.low is not None and spec.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {spec.low}")
        return spec

    def tuned(self) -> dict[str, IntParam | FloatParam]:
        """The parameters being searched, by `model` field name."""
        return {k: v for k, v in ((k, getattr(self, k)) for k in type(self).model_fields) if v is not None}


class TuneSettings(Strict):
    """`tsops tune`: an Optuna study over the forecaster's hyperparameters."""

    study: str | None = Field(None, description="study name; default model.name")
    storage: str | None = Field(
        None, description="Optuna storage URL (sqlite:///..., postgresql://...); default .tsops/optuna.db"
    )
    trials: int = Field(20, ge=1, description="trials per `tsops tune` run (--trials)")
    timeout_s: float | None = Field(None, gt=0, description="stop starting trials after this long")
    workers: int = Field(1, ge=1, le=64, description="processes on this machine (--workers)")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = Field(None, description="sampler seed (worker i uses seed + i)")
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = Field(3, ge=0, description="trials finished before pruning starts")
    pruner_warmup_epochs: int = Field(2, ge=0, description="epochs of a trial never pruned")
    start_from_defaults: bool = Field(
        True, description="a new study's first trial tries the model settings that lie in the space"
    )
    space: SearchSpace = SearchSpace()

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> TuneSettings:
        if self.sampler == "grid":
            ranges = [k for k, v in self.space.tuned().items() if v.choices is None]
            if ranges:
                raise ValueError(f"sampler grid needs choices for every tuned parameter; ranges: {ranges}")
        return self


class OnlineStoreSettings(Strict):
    type: Literal["sqlite", "redis"] = "sqlite"
    connection_string: str = "127.0.0.1:6379"


class OfflineStoreSettings(Strict):
    """Where the history with its features lives (training, backfill, the stream's log)."""

    type: Literal["file", "postgres"] = Field(
        "file", description="file: Parquet under .tsops/ read by DuckDB; postgres: Feast's PostgreSQL store"
    )
    url: str | None = Field(
        None,
        description="postgres: postgresql://USER:${PASSWORD_VAR}@HOST:PORT/DB; ${NAME} is read from "
        "the environment (or the file named by NAME_FILE) when used, never stored",
    )
    table: str = Field("tsops_features", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="postgres: table")
    db_schema: str = Field("public", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="postgres: schema")

    @model_validator(mode="after")
    def _postgres_needs_url(self) -> OfflineStoreSettings:
        if self.type == "postgres":
            if not self.url:
                raise ValueError("stores.offline.url is needed for type postgres")
            if not self.url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
                raise ValueError("stores.offline.url must be a postgresql:// URL")
        return self


class StoreSettings(Strict):
    online: OnlineStoreSettings = OnlineStoreSettings()
    offline: OfflineStoreSettings = OfflineStoreSettings()
    registry_url: str | None = Field(
        None,
        description="Feast's registry in a database (Feast's SQL registry), e.g. "
        "postgresql://USER:${PASSWORD_VAR}@HOST:PORT/DB; default a file under .tsops/. Cluster "
        "mode needs it: every role resolves the feature views from it",
    )

    @field_validator("registry_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql", "mysql", "sqlite")):
            raise ValueError("must be a SQLAlchemy database URL such as postgresql://...")
        return v


class TrackingSettings(Strict):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI: default SQLite under .tsops/; a tracking server "
        "(http(s)://...) in cluster mode, which then also holds the artefacts",
    )
    experiment: str | None = None
    artifact_location: str | None = Field(
        None,
        description="where a new experiment keeps its artefacts; default: the tracking server's "
        "own (mlflow-artifacts:/ through its proxy), or .tsops/mlartifacts for a local store",
    )


class DashboardSettings(Strict):
    """The live dashboard `tsops serve` serves at `/` (data under `/ui/...`)."""

    enabled: bool = Field(True, description="serve the dashboard at / and its data under /ui/")
    points: int = Field(
        168, ge=10, le=100_000, description="latest steps of actuals and forecasts per entity"
    )
    fan: int = Field(6, ge=1, le=100, description="latest forecasts drawn whole (the horizon fan)")
    refresh_s: float = Field(1.0, ge=0.1, le=60.0, description="how often files, metrics and stores are read")
    history_hours: float = Field(
        6.0, gt=0.0, description="online accuracy and drift history read at start (monitoring tables)"
    )
    stream_metrics_url: str | None = Field(
        None, description="a stream worker's Prometheus endpoint (tsops stream --metrics-port) for its lag"
    )

    @field_validator("stream_metrics_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:9108/metrics")
        return v


class ServingSettings(Strict):
    """`tsops serve`: the HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_batch_size: int = Field(64, ge=1, description="adaptive batching: most rows per model call")
    max_batch_wait_ms: float = Field(
        0.0,
        ge=0.0,
        description="adaptive batching: longest wait for a batch to fill; 0 = take what queued "
        "while the model ran (at c=8: 1,978 req/s with 0, 1,469 with 2; c=64 the same)",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    admin_token: str | None = Field(None, description="bearer token for admin endpoints")
    reload_interval_s: float = Field(2.0, gt=0.0, description="how often to check the champion")
    canary_percent: float = Field(0.0, ge=0.0, le=100.0, description="share routed to challenger")
    shadow: bool = Field(False, description="mirror requests to the challenger, return champion")
    dashboard: DashboardSettings = DashboardSettings()


class KafkaSettings(Strict):
    """Broker connection shared by the kafka source and sinks."""

    bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "tsops.events"
    group_id: str = "tsops-stream"
    session_timeout_ms: int = Field(2000, ge=1000)
    heartbeat_interval_ms: int = Field(400, ge=100)
    fetch_wait_max_ms: int = Field(
        10,
        ge=0,
        description="longest a fetch waits on the broker for new records (librdkafka's "
        "fetch.wait.max.ms, default 500): brokers that do not wake a waiting fetch when records "
        "arrive (tansu) add up to this much latency per hop",
    )
    unreachable_after_s: float = Field(
        60.0,
        gt=0,
        description="a stream worker whose broker has not answered for this long reports itself "
        "not live (/healthz 503, tsops_stream_live 0), for its orchestrator to restart it",
    )
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="more librdkafka settings, e.g. security"
    )


class SinkSettings(Strict):
    """Where prediction or dead-letter records go: `file` (JSONL/Parquet), `kafka`, `sql`."""

    type: Literal["file", "kafka", "sql"] = "file"
    path: str | None = Field(None, description="file: output path (.jsonl or .parquet)")
    topic: str | None = Field(None, description="kafka: topic")
    url: str | None = Field(None, description="sql: SQLAlchemy URL")
    table: str | None = Field(None, description="sql: table name")

    @model_validator(mode="after")
    def _required_per_type(self) -> SinkSettings:
        need = {"file": ["path"], "kafka": ["topic"], "sql": ["url", "table"]}[self.type]
        missing = [f for f in need if getattr(self, f) in (None, "")]
        if missing:
            raise ValueError(f"a {self.type} sink needs {missing}")
        return self


class AggregateSettings(Strict):
    """Tumbling event-time windows: raw events (ticks) become one value per `schema.freq` bar per
    entity. A bar [start, start + freq) closes when the entity's event time passes its end by
    `allowed_lateness`; a tick for a closed bar is late."""

    how: Literal["mean", "last", "first", "sum", "min", "max", "count"] = "mean"
    allowed_lateness: NonNegativeDuration = Field(
        "0s", description="how long after a bar's end ticks are still added"
    )

    @property
    def lateness(self) -> pd.Timedelta:
        return pd.Timedelta(self.allowed_lateness)


class SparkStreamSettings(Strict):
    """`tsops stream --engine spark`: the same pipeline on Spark Structured Streaming."""

    master: str = Field("local[2]", description="Spark master URL (local mode or a cluster)")
    trigger_interval_ms: int = Field(
        500, ge=0, description="micro-batch trigger interval; 0 starts each batch when the last ends"
    )
    checkpoint_dir: str = Field(
        ".tsops/spark-checkpoints", description="Spark checkpoints (offsets and state), one folder per source"
    )
    shuffle_partitions: int = Field(2, ge=1, description="partitions of the per-entity state")
    kafka_reader: Literal["python", "connector"] = Field(
        "python", description="python: a Python data source with confluent-kafka; connector: Spark's kafka"
    )
    max_events_per_batch: int = Field(20_000, ge=1, description="most events one micro-batch reads")
    conf: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="more Spark settings, e.g. spark.jars.packages"
    )


class StreamSettings(Strict):
    """`tsops stream`: where events come from, where records go, and the policies."""

    engine: Literal["python", "spark"] = Field("python", description="python processor or Spark")
    source: Literal["file", "kafka"] = "file"
    path: str | None = Field(None, description="file source: CSV or JSONL of events")
    speedup: float = Field(0.0, ge=0.0, description="file replay: event-time speed-up, 0 = max")
    sinks: list[SinkSettings] = Field(
        default_factory=lambda: [SinkSettings(type="file", path=".tsops/predictions.jsonl")]
    )
    dead_letter: SinkSettings = SinkSettings(type="file", path=".tsops/dead_letters.jsonl")
    batch_size: int = Field(5000, ge=1, description="most events per poll (one micro-batch)")
    poll_timeout_ms: int = Field(100, ge=1)
    model_threads: int = Field(
        1, ge=1, description="torch threads of the model's forward in a python-engine worker"
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="how often a worker checks the registry for a new champion; 0 = never"
    )
    checkpoint_interval_ms: int = Field(
        1000, ge=0, description="how often feature rows, states and offsets are made durable; 0 = every poll"
    )
    duplicates: Literal["dead_letter", "drop"] = Field(
        "dead_letter", description="events at or before an entity's last applied time"
    )
    unknown_entities: Literal["accept", "dead_letter"] = "accept"
    max_future: Duration = Field("1d", description="events later than now + this are dead letters")
    max_gap_steps: int = Field(168, ge=1, description="a jump of more steps than this is refused, not filled")
    max_event_bytes: int = Field(
        MAX_EVENT_BYTES, ge=64, description="a larger event payload is a dead letter (`too_large`)"
    )
    max_event_depth: int = Field(
        MAX_EVENT_DEPTH, ge=1, le=1024, description="JSON nested deeper is a dead letter (`too_deep`)"
    )
    aggregate: AggregateSettings | None = Field(
        None, description="aggregate raw events into schema.freq bars (unset: events are already bars)"
    )
    kafka: KafkaSettings = KafkaSettings()
    spark: SparkStreamSettings = SparkStreamSettings()


class MonitoringSettings(Strict):
    """`tsops monitor` and the stream's monitor: online accuracy, drift and their history."""

    accuracy_window: int = Field(
        500, ge=10, description="rolling MAE over the last N errors per model version and horizon step"
    )
    drift_window: int = Field(
        1000, ge=20, description="drift: the last N observations scored against the training reference"
    )
    drift_bins: int = Field(10, ge=2, le=100, description="quantile bins of the training reference")
    drift_features: list[str] | None = Field(
        None,
        description="features scored for drift besides the target; default: every feature except "
        "the window lags and calendar terms",
    )
    snapshot_interval_s: float = Field(
        10.0, ge=0.0, description="how often figures are stored in the history; 0 = every micro-batch"
    )
    database: str | None = Field(None, description="SQLAlchemy URL of the history (default: SQLite)")
    retention_days: float = Field(30.0, gt=0.0, description="history older than this is deleted")
    report_window: int = Field(168, ge=2, description="`tsops monitor --report`: latest N steps per entity")
    report_reference_rows: int = Field(5000, ge=100, description="most training rows in the report")


RetrainMode = Literal["warm", "scratch"]


class DriftTriggerSettings(Strict):
    """Fires when the drift score of the target (or of any of `columns`) reaches `threshold`."""

    type: Literal["drift"] = "drift"
    threshold: float = Field(0.25, gt=0.0, description="PSI; 0.1 is a moderate, 0.25 a large shift")
    columns: list[str] | None = Field(
        None, description="monitored columns it watches (default: the target only)"
    )
    min_rows: int = Field(200, ge=1, description="observations in the drift window before it may fire")
    mode: RetrainMode = "scratch"


class AccuracyTriggerSettings(Strict):
    """Fires when the champion's online MAE exceeds its training backtest MAE by `margin`."""

    type: Literal["accuracy"] = "accuracy"
    margin: float = Field(0.25, ge=0.0, description="relative: online MAE > backtest MAE × (1 + margin)")
    min_samples: int = Field(100, ge=1, description="errors per horizon step before it may fire")
    mode: RetrainMode = "warm"


class ScheduleTriggerSettings(Strict):
    """Fires when the last retrain (or the champion's registration) is `interval` ago."""

    type: Literal["schedule"] = "schedule"
    interval: PositiveDuration = Field("7d", description="a duration such as 12h or 7d (wall-clock time)")
    mode: RetrainMode = "warm"


TriggerSettings = Annotated[
    DriftTriggerSettings | AccuracyTriggerSettings | ScheduleTriggerSettings, Field(discriminator="type")
]


def _default_triggers() -> list[DriftTriggerSettings | AccuracyTriggerSettings | ScheduleTriggerSettings]:
    return [DriftTriggerSettings(), AccuracyTriggerSettings()]


class RollbackSettings(Strict):
    """Automatic rollback of a promotion whose online accuracy is worse than its predecessor's."""

    enabled: bool = True
    window: int = Field(200, ge=1, description="errors per horizon step the new champion needs first")
    margin: float = Field(0.1, ge=0.0, description="relative: new MAE > previous MAE × (1 + margin)")


class RetrainSettings(Strict):
    """`tsops retrain` and the continual-learning loop: triggers, modes, promotion, rollback."""

    triggers: list[TriggerSettings] = Field(default_factory=lambda: _default_triggers())
    cooldown: NonNegativeDuration = Field(
        "1h", description="least wall-clock time between automatic retrains"
    )
    holdout: int | None = Field(
        None, ge=1, description="steps held out for the backtest and the gate; default backtest.holdout"
    )
    scratch_window: int = Field(24 * 90, ge=48, description="scratch: latest N steps per entity used")
    warm_window: int = Field(24 * 30, ge=48, description="warm start: latest N steps per entity used")
    warm_epochs: int = Field(3, ge=1, description="warm start: fine-tuning epochs")
    warm_learning_rate: float = Field(5e-4, gt=0.0, le=1.0, description="warm start: learning rate")
    threads: int = Field(1, ge=1, description="torch threads of a retrain (it runs beside serving)")
    auto_promote: bool = Field(True, description="promote a challenger that passes the gate")
    gate_beats_best_baseline: bool = Field(
        False,
        description="the gate (tsops promote, automatic promotion) also refuses a challenger whose "
        "backtest MAE is not below the best baseline's (its training run's lstm_vs_best_baseline < 1)",
    )
    rollback: RollbackSettings = RollbackSettings()


class StartupSettings(Strict):
    """How a role waits at start for the network services its settings name (cluster mode)."""

    wait_s: float = Field(60.0, ge=0.0, description="give up (exit 3, naming the service) after this long")
    retry_every_s: float = Field(2.0, gt=0.0, description="time between two attempts")


class DeploySettings(Strict):
    """`tsops deploy render`: the Kubernetes tree (docs/kubernetes.md)."""

    namespace: str = Field("tsops", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: str = Field("ghcr.io/tsops/tsops:0.1.0", description="the tsops image (every role); --image")
    spark_image: str | None = Field(None, description="the Spark variant; default: image + '-spark'")
    serve_replicas: int = Field(2, ge=1, description="prod: tsops serve replicas (dev: 1)")
    serve_max_replicas: int = Field(6, ge=1, description="prod: the serve autoscaler's maximum")
    stream_replicas: int = Field(2, ge=1, description="prod: stream workers; at most `partitions`")
    partitions: int = Field(4, ge=1, description="partitions of the events topic (workers scale up to it)")
    retention_hours: float = Field(
        168.0, gt=0, description="retention of the events, predictions, dead letters"
    )
    kafka_replicas: int = Field(3, ge=1, description="prod: Kafka nodes (dev: 1)")
    secret: str = Field("tsops-secrets", description="the Secret holding every ${NAME} the settings use")
    mlflow_database: str = Field("mlflow", description="the tracking server's PostgreSQL database")
    kserve_storage_uri: str | None = Field(
        None,
        description="where the champion's MLflow artefact lives (s3://, gs://, pvc://): renders the "
        "alternative InferenceService that serves it with modelFormat mlflow",
    )
    retrain_schedule: str | None = Field(
        None,
        description="cron schedule of the retrain CronJob; default from the schedule trigger, else daily",
    )


class Settings(Strict):
    version: Literal[1] = 1
    project: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Feast project name")
    data: DataSettings
    series: SeriesSettings = Field(alias="schema")
    features: FeatureSettings = FeatureSettings()
    model: ModelSettings
    backtest: BacktestSettings = BacktestSettings()
    stores: StoreSettings = StoreSettings()
    tracking: TrackingSettings = TrackingSettings()
    serving: ServingSettings = ServingSettings()
    stream: StreamSettings = StreamSettings()
    tune: TuneSettings = TuneSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    retrain: RetrainSettings = RetrainSettings()
    startup: StartupSettings = StartupSettings()
    deploy: DeploySettings = DeploySettings()

    @model_validator(mode="after")
    def _retrain_fits_monitoring(self) -> Settings:
        """Thresholds that need more samples than the monitor keeps could never be reached."""
        windows = {"accuracy": self.monitoring.accuracy_window, "drift": self.monitoring.drift_window}
        needs = [("retrain.rollback.window", self.retrain.rollback.window, "accuracy")]
        for i, t in enumerate(self.retrain.triggers):
            if isinstance(t, AccuracyTriggerSettings):
                needs.append((f"retrain.triggers.{i}.min_samples", t.min_samples, "accuracy"))
            elif isinstance(t, DriftTriggerSettings):
                needs.append((f"retrain.triggers.{i}.min_rows", t.min_rows, "drift"))
        for where, value, kind in needs:
            if value > windows[kind]:
                raise ValueError(
                    f"{where} ({value}) exceeds monitoring.{kind}_window ({windows[kind]}): never reached"
                )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        window = self.features.window
        if window < self.model.main_season:
            raise ValueError(
                f"features.window ({window}) must be at least the main model.season "
                f"({self.model.main_season}): the seasonal-naive baseline reads it from the window"
            )
        if self.model.horizon > self.backtest.holdout:
            raise ValueError(
                f"model.horizon ({self.model.horizon}) exceeds backtest.holdout ({self.backtest.holdout}): "
                "no forecast origin would fit in the held-out tail"
            )
        if self.model.input_window is not None and self.model.input_window > window:
            raise ValueError(
                f"model.input_window ({self.model.input_window}) exceeds features.window ({window})"
            )
        spec = self.tune.space.input_window
        if spec is not None:
            values = spec.choices or [v for v in (spec.low, spec.high) if v is not None]
            if any(v > window for v in values):
                raise ValueError(
                    f"tune.space.input_window: {max(values)} exceeds features.window ({window}); "
                    "the model reads its window from the ingested features"
                )
        return self


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "TSOPS_PROJECT_DIR":
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in _SECTIONS:
            continue  # not a settings variable (e.g. TSOPS_ADMIN_TOKEN is read elsewhere)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
    return tree


def _section_names() -> set[str]:
    return {(f.alias or name) for name, f in Settings.model_fields.items()} | set(Settings.model_fields)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_SECTIONS = _section_names()


def validate(raw: dict[str, Any], source: str) -> Settings:
    """Validate a raw mapping, turning pydantic's errors into one ConfigError naming each field."""
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        details = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown field (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            details.append(f"{loc}: {msg}")
        raise ConfigError(f"invalid configuration ({len(details)} problem(s))", source, details) from None


class Project:
    """A project folder: its settings and where its embedded state lives."""

    def __init__(self, root: Path, settings: Settings):
        self.root = root.resolve()
        self.settings = settings

    @classmethod
    def load(cls, root: str | Path | None = None, environ: dict[str, str] | None = None) -> Project:
        env = dict(os.environ if environ is None else environ)
        root = Path(root or env.get("TSOPS_PROJECT_DIR") or ".")
        path = root / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"no {CONFIG_FILE} here; create a project with `tsops init`", str(path))
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"not valid YAML: {e}", str(path)) from None
        if not isinstance(raw, dict):
            raise ConfigError("must be a mapping of sections", str(path))
        return cls(root, validate(_merge(raw, _env_overrides(env)), str(path)))

    # Embedded state, all under DIR/.tsops/
    @property
    def state_dir(self) -> Path:
        return self.root / ".tsops"

    @property
    def data_path(self) -> Path:
        p = Path(self.settings.data.path).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def offline_path(self) -> Path:
        return self.state_dir / "offline" / "features.parquet"

    @property
    def feature_repo(self) -> Path:
        return self.root / "feature_repo"

    @cached_property
    def tracking_uri(self) -> str:
        from tsops.secrets import with_installed_driver

        uri = self.settings.tracking.uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"
        return with_installed_driver(uri)

    @property
    def tracking_server(self) -> bool:
        """The tracking URI is an MLflow server (it holds runs, registry and artefacts)."""
        return self.tracking_uri.startswith(("http://", "https://", "databricks"))

    @property
    def artifact_location(self) -> str | None:
        """Where a new experiment keeps artefacts: the setting; else the server's default
        (None); else a folder under `.tsops/` (a local store has no artefact service)."""
        if self.settings.tracking.artifact_location:
            return self.settings.tracking.artifact_location
        return None if self.tracking_server else (self.state_dir / "mlartifacts").as_uri()

    @property
    def experiment(self) -> str:
        return self.settings.tracking.experiment or self.settings.project

    @property
    def study_name(self) -> str:
        return self.settings.tune.study or self.settings.model.name

    @property
    def study_storage(self) -> str:
        return self.settings.tune.storage or f"sqlite:///{self.state_dir / 'optuna.db'}"
