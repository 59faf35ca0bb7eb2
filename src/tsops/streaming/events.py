"""Observation events: parsing and validation. A bad event becomes a dead letter with the
original payload and a reason, in the one error format of `tsops.errors`."""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pandas as pd

from tsops.errors import TsopsError
from tsops.records import INVALID_UTF8, Event
from tsops.settings import MAX_EVENT_BYTES, MAX_EVENT_DEPTH, SINGLE_SERIES_VALUE, SeriesSettings


class EventError(TsopsError):
    """An event the processor cannot apply; `kind` is the dead-letter reason."""

    def __init__(self, reason: str, message: str, where: str | None = None):
        super().__init__(message, where)
        self.kind = reason


@dataclass(frozen=True)
class RawRecord:
    """One record as a source delivered it, with its position for commits."""

    payload: str
    partition: int
    offset: int
    received: float  # time.perf_counter() when polled


def parse(
    payload: str,
    series: SeriesSettings,
    latest_allowed: pd.Timestamp,
    *,
    floor: bool = True,
    max_bytes: int = MAX_EVENT_BYTES,
    max_depth: int = MAX_EVENT_DEPTH,
) -> Event:
    """Validate one JSON payload (see `EventParser`, which a micro-batch builds once)."""
    return EventParser(series, latest_allowed, floor=floor, max_bytes=max_bytes, max_depth=max_depth)(payload)


class EventParser:
    """Validates JSON payloads against the project's schema (the history's column names). The
    time is floored to the series' interval unless `floor` is false (raw ticks that the stream
    aggregates into bars). Whatever the payload, the outcome is an event or an `EventError`: a
    poison pill is a dead letter, never a crashed worker.

    Built once per micro-batch: the settings it reads (names, the plausible range, the step)
    are plain attributes here, not a settings object's properties read for every event."""

    def __init__(
        self,
        series: SeriesSettings,
        latest_allowed: pd.Timestamp,
        *,
        floor: bool = True,
        max_bytes: int = MAX_EVENT_BYTES,
        max_depth: int = MAX_EVENT_DEPTH,
    ):
        self.entity, self.time, self.target = series.entity, series.time, series.target
        self.needed = [c for c in (series.entity, series.time, series.target) if c]
        self.bounds = series.plausible_range  # schema.valid_min/valid_max, else derived by the last ingest
        self.latest_allowed = latest_allowed
        self.latest_ns = latest_allowed.value
        self.step_ns = series.step.value if floor else 0
        self.max_bytes, self.max_depth = max_bytes, max_depth

    def __call__(self, payload: str) -> Event:
        try:
            return self._parse(payload)
        except EventError:
            raise
        except RecursionError:
            raise EventError("too_deep", f"nested deeper than {self.max_depth} levels") from None
        except Exception as e:  # anything unforeseen in a payload is the payload's fault
            raise EventError("invalid_event", f"unreadable event ({type(e).__name__})") from None

    def _parse(self, payload: str) -> Event:
        max_bytes, max_depth = self.max_bytes, self.max_depth
        # Characters never outnumber UTF-8 bytes: only a long payload needs its bytes counted.
        if len(payload) > max_bytes // 4 and _size(payload) > max_bytes:
            raise EventError("too_large", f"{_size(payload)} bytes, more than {max_bytes}")
        try:
            raw: Any = orjson.loads(payload)  # the hot path: several times the stdlib's speed
        except orjson.JSONDecodeError as e:
            if payload.startswith(INVALID_UTF8):
                message = "not UTF-8 text (its bad bytes are shown as \\xNN)"
                raise EventError("invalid_utf8", message) from None
            if "depth" in str(e):  # orjson's own limit (1024): the stdlib would recurse as deep
                raise EventError("too_deep", f"nested deeper than {max_depth} levels") from None
            try:  # the stdlib also reads NaN and Infinity, which then get their own reason below
                raw = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise EventError("invalid_json", f"not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise EventError("invalid_json", "an event must be a JSON object")
        if _deeper_than(raw, max_depth):
            raise EventError("too_deep", f"nested deeper than {max_depth} levels")
        missing = [c for c in self.needed if raw.get(c) is None]
        if missing:
            raise EventError("missing_field", f"missing field(s) {missing}", ",".join(missing))
        entity = raw.get(self.entity) if self.entity else SINGLE_SERIES_VALUE
        if not isinstance(entity, str | int) or isinstance(entity, bool) or str(entity) == "":
            raise EventError("wrong_type", f"entity {entity!r} must be a non-empty string", self.entity)
        value = raw[self.target]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EventError("wrong_type", f"target {value!r} is not a number", self.target)
        if isinstance(value, int) and not -_FLOAT_MAX <= value <= _FLOAT_MAX:  # JSON integers are unbounded
            raise EventError("non_finite", "target is an integer beyond a float's range", self.target)
        if not math.isfinite(value):
            raise EventError("non_finite", f"target {value!r} is not finite", self.target)
        bounds = self.bounds
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            message = f"target {value!r} is outside the plausible range [{bounds[0]:.6g}, {bounds[1]:.6g}]"
            raise EventError("outlier", message, self.target)
        ns = _utc_ns(raw[self.time], self.time)
        if ns > self.latest_ns:
            message = f"time {raw[self.time]} is after {self.latest_allowed}"
            raise EventError("future_timestamp", message, self.time)
        if ns < _EARLIEST_NS:
            raise EventError("wrong_type", f"time {raw[self.time]!r} is before {pd.Timestamp.min}", self.time)
        if self.step_ns:
            ns -= ns % self.step_ns
        return Event(str(entity), pd.Timestamp(ns), float(value))


_FLOAT_MAX = sys.float_info.max
_NESTED = (dict, list)  # a tuple: `dict | list` in isinstance builds a union object per call


def _size(payload: str) -> int:
    """The payload's length in bytes as it arrived."""
    return len(payload.encode("utf-8", errors="surrogatepass"))


def _deeper_than(event: dict[str, Any], limit: int) -> bool:
    """Whether the object nests more than `limit` levels (the event itself is level 1); a flat
    event, the usual one, costs one look at each value."""
    level = [v for v in event.values() if isinstance(v, _NESTED)]
    if not level:  # a flat event: no list built beyond this one
        return False
    depth = 1
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            c for v in level for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, _NESTED)
        ]
    return False


_EPOCH = datetime(1970, 1, 1)
_EARLIEST_NS = pd.Timestamp.min.value
_NANOS = re.compile(r"\.\d{7}")
_MICROSECOND = timedelta(microseconds=1)


def _utc_ns(raw: Any, where: str) -> int:
    """An event time as UTC nanoseconds. ISO 8601 strings take the standard library's C parser
    (several times faster than `pd.Timestamp`, which stays the fallback for other spellings)."""
    if isinstance(raw, str):
        try:
            # Sub-microsecond digits would be cut off by datetime: those go to pandas.
            dt = None if _NANOS.search(raw) else datetime.fromisoformat(raw)
        except ValueError:
            dt = None
        if dt is not None:
            if dt.tzinfo is not None:
                dt = dt.astimezone(UTC).replace(tzinfo=None)
            return (dt - _EPOCH) // _MICROSECOND * 1000
    try:
        ts = pd.Timestamp(raw)
    except (ValueError, TypeError, OverflowError) as e:
        raise EventError("wrong_type", f"time {raw!r}: {e}", where) from None
    if ts is pd.NaT or pd.isna(ts):
        raise EventError("wrong_type", f"time {raw!r} is not a timestamp", where)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.value)


def dead_letter(error: TsopsError, record: RawRecord) -> dict[str, Any]:
    """The dead-letter record: the error body plus the original payload and its position."""
    return {
        **error.as_dict(),
        "payload": record.payload.removeprefix(INVALID_UTF8),
        "partition": record.partition,
        "offset": record.offset,
        "at": datetime.now(UTC).isoformat(),
    }
