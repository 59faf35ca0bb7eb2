"""Each feature is defined once, with two methods: a vectorised one over an entity's regular
history (batch: training, backfill) and an incremental one over the entity's state after one
new observation (stream). Both must agree to 1e-6; `tests/test_feature_parity.py` checks it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd

from tsops.settings import FeatureSettings


class EntityState:
    """What the incremental engine keeps per entity: the last `lookback` values, oldest first.

    The values live in a float64 ring of `lookback` slots: 8 bytes a value, where a deque of
    Python floats took about 32 (a stream worker holds one state per entity: 6.1 → 1.8 KB at a
    lookback of 170, issue 18)."""

    __slots__ = ("_array", "_count", "_next", "_ring", "last_time", "lookback", "pending")

    def __init__(
        self,
        lookback: int,
        values: Iterable[float] = (),
        last_time: pd.Timestamp | None = None,
        pending: dict[str, Any] | None = None,
    ):
        self.lookback = lookback
        kept = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
        kept = kept[max(len(kept) - lookback, 0) :]
        self._ring = np.empty(lookback, np.float64)
        self._ring[: len(kept)] = kept
        self._count = len(kept)  # values held (≤ lookback)
        self._next = len(kept) % lookback  # the slot the next value goes to (the oldest when full)
        self.last_time = last_time
        # Engine bookkeeping that is not a feature (the stream's open aggregation bars), persisted
        # with the state so a restarted worker resumes exactly.
        self.pending: dict[str, Any] = {} if pending is None else pending
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self._count

    def push(self, time: pd.Timestamp, value: float) -> None:
        at = self._next
        self._ring[at] = value
        at += 1
        self._next = 0 if at == self.lookback else at
        if self._count < self.lookback:
            self._count += 1
        self.last_time = time
        self._array = None

    @property
    def values(self) -> np.ndarray:
        """The values, oldest first (as `array()`)."""
        return self.array()

    @property
    def last_value(self) -> float:
        """The latest value (the state must hold one)."""
        if not self._count:
            raise IndexError("the state holds no value")
        return float(self._ring[self._next - 1])

    def array(self) -> np.ndarray:
        """The values as an array, oldest first (built once per push; do not modify it)."""
        cached = self._array
        if cached is None:
            if self._count < self.lookback:
                cached = self._ring[: self._count].copy()
            else:
                cached = np.concatenate((self._ring[self._next :], self._ring[: self._next]))
            self._array = cached
        return cached

    def copy(self) -> EntityState:
        """An independent snapshot (the stream's checkpoint writes it while the state moves on)."""
        return EntityState(self.lookback, self.array(), self.last_time, copy.deepcopy(self.pending))

    def to_dict(self) -> dict[str, object]:
        return {
            "values": self.array().tolist(),
            "last_time": None if self.last_time is None else self.last_time.isoformat(),
            **({"pending": self.pending} if self.pending else {}),
        }

    @classmethod
    def from_dict(cls, lookback: int, raw: dict[str, object]) -> EntityState:
        last = raw.get("last_time")
        values = cast(list[float], raw.get("values") or [])
        pending = cast(dict[str, Any], raw.get("pending") or {})
        return cls(lookback, values, None if last is None else pd.Timestamp(str(last)), pending)


class Feature(Protocol):
    """One feature family. `names` are its output columns, `lookback` how many observations
    (the current one included) it reads."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def lookback(self) -> int: ...

    def at(self, windows: np.ndarray, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        """The definition: one row per observation, from `windows` (each row the observations
        up to and including it, oldest first, NaN-padded in front; at least `lookback` wide)
        and the observation times."""
        ...

    def batch(self, values: np.ndarray, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        """Every row of one entity's regular history: `at` over its sliding windows."""
        ...

    def incremental(self, state: EntityState) -> dict[str, float]: ...


def sliding_windows(values: np.ndarray, width: int) -> np.ndarray:
    """Row i holds values[i - width + 1 .. i], NaN before the start: a view, no copy per row."""
    padded = np.concatenate([np.full(width - 1, np.nan), np.asarray(values, dtype=float)])
    return np.lib.stride_tricks.sliding_window_view(padded, width)


@dataclass(frozen=True)
class Lags:
    """Values k steps before the current one, for each k (k=0 is the current observation)."""

    ks: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"lag_{k}" for k in self.ks)

    @property
    def lookback(self) -> int:
        return max(self.ks) + 1

    def at(self, windows: np.ndarray, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        return {name: windows[:, -1 - k] for name, k in zip(self.names, self.ks, strict=True)}

    def batch(self, values: np.ndarray, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        return {n: col.copy() for n, col in self.at(sliding_windows(values, self.lookback), times).items()}

    def incremental(self, state: EntityState) -> dict[str, float]:
        arr = state.array()
        n = len(arr)
        return {
            name: float(arr[n - 1 - k]) if k < n else math.nan
            for name, k in zip(self.names, self.ks, strict=True)
        }


@dataclass(frozen=True)
class Rolling:
    """Mean and sample standard deviation of the last n observations (current included)."""

    n: int

    @property
    def names(self) -> tuple[str, ...]:
        return (f"roll_mean_{self.n}", f"roll_std_{self.n}")

    @property
    def lookback(self) -> int:
        return self.n

    def at(self, windows: np.ndarray, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        # Exact windowed moments (no running sums), so batch and stream agree bit for bit; a
        # window reaching before the entity's first observation holds NaN and gives NaN.
        w = windows[:, windows.shape[1] - self.n :]
        return dict(zip(self.names, (w.mean(axis=1), w.std(axis=1, ddof=1)), strict=True))

    def batch(self, values: np.ndarray, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        return self.at(sliding_windows(values, self.n), times)

    def incremental(self, state: EntityState) -> dict[str, float]:
        arr = state.array()
        if len(arr) < self.n:
            return dict.fromkeys(self.names, math.nan)
        w = arr[-self.n :]
        return dict(zip(self.names, (float(w.mean()), float(w.std(ddof=1))), strict=True))


_CALENDAR_PERIODS = {
    "minuteofday": 1440.0,
    "hour": 24.0,
    "dayofweek": 7.0,
    "dayofyear": 365.25,
    "month": 12.0,
}


def _calendar_value(times: pd.DatetimeIndex | pd.Timestamp, term: str) -> np.ndarray | float:
    """The raw calendar position of `times` for `term` (minute of day for sub-hourly data)."""
    if term == "minuteofday":
        return np.asarray(times.hour * 60 + times.minute, dtype=float)
    return np.asarray(getattr(times, term), dtype=float)


@dataclass(frozen=True)
class Calendar:
    """A cyclic calendar term of the observation's time, as sine and cosine."""

    term: str

    @property
    def names(self) -> tuple[str, ...]:
        return (f"{self.term}_sin", f"{self.term}_cos")

    @property
    def lookback(self) -> int:
        return 1

    def _angle(self, raw: np.ndarray | float) -> np.ndarray | float:
        return 2.0 * np.pi * np.asarray(raw, dtype=float) / _CALENDAR_PERIODS[self.term]

    def at(self, windows: np.ndarray, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        angle = self._angle(_calendar_value(times, self.term))
        return dict(zip(self.names, (np.sin(angle), np.cos(angle)), strict=True))

    def batch(self, values: np.ndarray, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        return self.at(np.empty((len(times), 0)), times)

    def incremental(self, state: EntityState) -> dict[str, float]:
        assert state.last_time is not None
        angle = float(self._angle(_calendar_value(state.last_time, self.term)))
        return dict(zip(self.names, (math.sin(angle), math.cos(angle)), strict=True))


class FeatureSet:
    """The project's features in a fixed column order, built from settings."""

    def __init__(self, settings: FeatureSettings):
        self.settings = settings
        extra = tuple(sorted(k for k in {*settings.lags, *settings.base_lags} if k >= settings.window))
        self.features: list[Feature] = [
            Lags(tuple(range(settings.window))),
            *([Lags(extra)] if extra else []),
            *(Rolling(n) for n in settings.rolling),
            *(Calendar(t) for t in settings.calendar),
        ]
        self.names: list[str] = [n for f in self.features for n in f.names]
        self.window_names: list[str] = [f"lag_{k}" for k in range(settings.window)]
        # the network's extra inputs: every column but the window and the lags only the base reads
        not_context = {
            *self.window_names,
            *(f"lag_{k}" for k in set(settings.base_lags) - set(settings.lags)),
        }
        self.context_names: list[str] = [n for n in self.names if n not in not_context]
        self.lookback: int = max(f.lookback for f in self.features)

    def definition_hash(self) -> str:
        """Changes exactly when the feature definition changes (a lineage tag on every model)."""
        # without base lags, the dump of the settings before they existed: older hashes still match
        dumped = self.settings.model_dump(exclude=set() if self.settings.base_lags else {"base_lags"})
        spec = json.dumps({"names": self.names, "settings": dumped}, sort_keys=True)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def new_state(self) -> EntityState:
        return EntityState(self.lookback)
