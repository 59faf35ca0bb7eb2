"""Shared record types and time arithmetic, a layer below every package that passes them: the
observation event (streaming parses it, monitoring joins it with forecasts) and the target
times of a forecast (stream records, `/forecast`, backtest plots, the dashboard)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Event:
    """One observation of one entity: what a stream applies and the monitor scores."""

    entity: str
    time: pd.Timestamp  # tz-naive UTC, floored to the series' interval
    value: float


def target_times(origins: Any, step_ns: int, horizon: int) -> np.ndarray:
    """The times forecasts made at `origins` are for: origin + h·step for h = 1..`horizon`, as
    an (origins, horizon) datetime64[ns] array (`origins`: datetime64, int64 nanoseconds or
    timestamps). The one place that turns an origin and a step into target times."""
    start = np.asarray(origins, dtype="datetime64[ns]").reshape(-1)
    offsets = (np.arange(1, horizon + 1, dtype=np.int64) * int(step_ns)).astype("timedelta64[ns]")
    return start[:, None] + offsets[None, :]


def iso_seconds(times: np.ndarray) -> list[Any]:
    """datetime64 values as ISO 8601 strings to the second (the records' time format)."""
    return np.datetime_as_string(times, unit="s").tolist()  # type: ignore[no-any-return]


class Interval(TypedDict):
    lower: list[float]
    upper: list[float]


class Prediction(TypedDict):
    """A forecast as the stream engines write it (`streaming.steps.prediction_records`) and the
    monitor, the dashboard, the sinks and the batch Kafka target read it: a JSON object."""

    key: str  # entity|event_time|model_version: a replay rewrites the same record
    entity: str
    event_time: str  # ISO, the origin of the forecast
    target_times: list[str]  # ISO, origin + h·step for h = 1..H
    values: list[float]
    model: str
    model_version: int
    latency_ms: float  # poll → prediction in the worker
    intervals: NotRequired[dict[str, Interval]]  # by level ("80", "95"), when calibrated


# A payload whose bytes are not UTF-8 travels as text (through Spark's Arrow batches too) behind
# this mark, its bad bytes written \xNN: no valid JSON starts with NUL, so the event parser
# dead-letters it as `invalid_utf8` instead of accepting U+FFFD-mangled names.
INVALID_UTF8 = "\x00invalid-utf8\x00"


def payload_text(raw: bytes) -> str:
    """A record's bytes as text: UTF-8, or the bytes marked `INVALID_UTF8` if they are not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_UTF8 + raw.decode("utf-8", errors="backslashreplace")


def utc_ns(times: pd.Series) -> np.ndarray:
    """Timestamps as UTC nanoseconds, whether they came tz-aware (Feast) or naive (Parquet)."""
    parsed = pd.to_datetime(times, utc=True)
    return parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
