"""Online accuracy: forecasts joined with the actuals that arrive later on the stream.

A forecast record (what the stream processor emits, `streaming.steps.prediction_records`)
made at event time `o` predicts steps `o + 1·Δ … o + H·Δ`. An observation of entity `e` at
time `t` is the actual of every pending forecast of `e` whose target time is `t`; each joined
pair is one absolute error of that forecast's model version at horizon step `h = (t - o)/Δ`.
The rolling MAE per model version and step averages the last `monitoring.accuracy_window`
errors.

Pending forecasts stay bounded: a forecast whose every step has joined its actual keeps only
its key (to tell a replay of it), and any forecast is forgotten once all its targets are older
than the entity's latest actual minus the horizon (its unjoined steps are counted as expired).
Each (forecast, step) joins at most one actual, so duplicates and replays change nothing. An actual
that joins nothing is counted and logged with its reason: `no_forecast`, `duplicate` (the same
time as the entity's latest actual) or `out_of_order` (older than it).

Online coverage: a record's `intervals` (`{"80": {"lower": [...], "upper": [...]}, ...}`) are
kept with its values; each joined pair also says, per level, whether the actual fell inside
[lower, upper]. The rolling coverage per version, level and step is the share inside among the
last `accuracy_window` joined pairs that had bounds at that level.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tsops.records import Event, Prediction

log = logging.getLogger(__name__)

UNMATCHED_REASONS = ("no_forecast", "duplicate", "out_of_order")


class RollingErrors:
    """The last `window` absolute errors per horizon step of one model version (ring buffers)."""

    def __init__(self, horizon: int, window: int):
        self.window = window
        self.errors = np.zeros((horizon, window))
        self.count = np.zeros(horizon, dtype=np.int64)  # errors held per step (≤ window)
        self.position = np.zeros(horizon, dtype=np.int64)  # next slot per step
        self.total = 0  # errors ever added

    def add(self, steps: np.ndarray, errors: np.ndarray) -> None:
        """Add errors at 1-based horizon `steps` (arrays of equal length), in order: each
        step's ring buffer keeps its last `window` errors. One pass for all steps."""
        n = len(errors)
        self.total += n
        if not n:
            return
        order = np.argsort(steps, kind="stable")  # by step, keeping arrival order within one
        row = np.asarray(steps)[order].astype(np.int64) - 1
        new = np.asarray(errors, dtype=float)[order]
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))  # position within its step
        added = np.bincount(row, minlength=len(self.count))
        skip = np.maximum(added - self.window, 0)  # older errors a full window overwrites anyway
        keep = rank >= skip[row]
        row, new, rank = row[keep], new[keep], rank[keep] - skip[row[keep]]
        self.errors[row, (self.position[row] + rank) % self.window] = new
        written = added - skip
        self.position = (self.position + written) % self.window
        self.count = np.minimum(self.window, self.count + written)

    def mae_by_step(self) -> np.ndarray:
        """Rolling MAE per step (NaN where a step has no error yet)."""
        sums = np.array([self.errors[i, : self.count[i]].sum() for i in range(len(self.count))])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, sums / np.maximum(self.count, 1), np.nan)

    def overall(self) -> tuple[float | None, int]:
        """(mean of the per-step MAEs over the steps with errors, fewest errors of any step)."""
        by_step = self.mae_by_step()
        known = by_step[np.isfinite(by_step)]
        return (float(known.mean()) if len(known) else None), int(self.count.min())

    def figure(self) -> dict[str, Any]:
        """Overall and per step, as the JSON figures give them (`value` is the rolling mean:
        the MAE of errors, the coverage of 0/1 inside indicators)."""
        value, n = self.overall()
        return {
            "value": value,
            "n": n,
            "by_step": [float(x) if np.isfinite(x) else None for x in self.mae_by_step()],
            "n_by_step": [int(c) for c in self.count],
        }


@dataclass
class AccuracyCounts:
    actuals: int = 0  # observations seen
    joined: int = 0  # (forecast, step) pairs joined with an actual
    out_of_order: int = 0  # actuals older than their entity's latest actual (joined or not)
    unmatched: Counter[str] = field(default_factory=Counter)  # actuals joining nothing, by reason
    expired_steps: int = 0  # forecast steps dropped without an actual
    invalid_forecasts: int = 0  # prediction records that could not be read

    def as_dict(self) -> dict[str, Any]:
        return {
            "actuals": self.actuals,
            "joined": self.joined,
            "out_of_order": self.out_of_order,
            "unmatched": {r: self.unmatched.get(r, 0) for r in UNMATCHED_REASONS},
            "expired_steps": self.expired_steps,
            "invalid_forecasts": self.invalid_forecasts,
        }


_KEY_SHIFT = 2**32  # pending keys: entity code × 2^32 + (origin step − base + 2^31)
_NO_TIME = np.iinfo(np.int64).min


def _earlier_max(codes: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """For each position, the largest step at an earlier position with the same code
    (`_NO_TIME` where there is none): a grouped running maximum, shifted by one."""
    n = len(codes)
    order = np.lexsort((np.arange(n), codes))  # by code, then batch position
    c, s = codes[order], steps[order]
    first = np.ones(n, bool)
    first[1:] = c[1:] != c[:-1]
    group = np.cumsum(first) - 1
    low, span = int(s.min()), int(s.max() - s.min()) + 1
    # Offsetting each group above the previous one lets one running maximum stay in its group.
    running = np.maximum.accumulate(group * span + (s - low)) - group * span + low
    before = np.empty(n, np.int64)
    before[0] = _NO_TIME
    before[1:] = running[:-1]
    before[first] = _NO_TIME
    out = np.empty(n, np.int64)
    out[order] = before
    return out


class _Pending:
    """The pending forecasts of one model version, columnar.

    The arrays grow by a quarter when full, so an append copies its own rows, not every
    pending forecast's. A dropped row (expired or done) gets a key no actual asks for (its
    negative position) and its slot is reused by the next appends; the arrays shrink only when
    less than half of them is in use (entities gone). A micro-batch used to copy every pending
    forecast (about 1 KB each at H = 24 with two interval levels) on each append and each
    expiry: O(entities) per batch (issue 18).

    A forecast whose every step has joined is done: its row is dropped and only its key is
    kept (`_done`, sorted) until it expires, so that a replay of its record is not taken for a
    new forecast. In an ordered stream an entity then holds H forecasts with their values and
    H + 1 keys, instead of 2·H + 1 forecasts with their values, and the bounds are float32
    (`_outward`): about 650 bytes a forecast at H = 24 with two levels (issue 18: worker
    memory per entity, 57 → 18 KiB in steady state).
    """

    GROWTH = 1.25  # capacity × this when full

    def __init__(self, horizon: int, levels: Sequence[str] = ()):
        self.horizon = horizon
        self.levels = list(levels)
        self.size = 0  # rows in use, dropped ones included
        self._free = np.zeros(0, np.int64)  # the dropped rows below `size`: reused first
        self._keys = np.zeros(0, np.int64)
        self._codes = np.zeros(0, np.int64)
        self._origins = np.zeros(0, np.int64)  # in steps
        self._values = np.zeros((0, horizon))
        self._joined = np.zeros((0, horizon), bool)  # step h-1 has its actual
        # float32, rounded outward (NaN: no bound): see `_outward`
        self._lower = {level: np.zeros((0, horizon), np.float32) for level in self.levels}
        self._upper = {level: np.zeros((0, horizon), np.float32) for level in self.levels}
        # The live keys sorted, and their rows: a lookup is a binary search, and an append or a
        # drop moves 16 bytes per pending forecast instead of rehashing every key.
        self._sorted = np.zeros(0, np.int64)
        self._rows = np.zeros(0, np.int64)
        self._done = np.zeros(0, np.int64)  # keys of the done forecasts, sorted

    @property
    def keys(self) -> np.ndarray:
        return self._keys[: self.size]

    @property
    def codes(self) -> np.ndarray:
        return self._codes[: self.size]

    @property
    def origins(self) -> np.ndarray:
        return self._origins[: self.size]

    @property
    def values(self) -> np.ndarray:
        return self._values[: self.size]

    @property
    def joined(self) -> np.ndarray:
        return self._joined[: self.size]

    @property
    def lower(self) -> dict[str, np.ndarray]:
        return {level: a[: self.size] for level, a in self._lower.items()}

    @property
    def upper(self) -> dict[str, np.ndarray]:
        return {level: a[: self.size] for level, a in self._upper.items()}

    @property
    def live(self) -> int:
        return self.size - len(self._free)

    @property
    def nbytes(self) -> int:
        """The bytes the arrays hold (capacity included)."""
        arrays = [self._keys, self._codes, self._origins, self._values, self._joined]
        index = [self._sorted, self._rows, self._free, self._done]
        held = [*arrays, *self._lower.values(), *self._upper.values(), *index]
        return sum(a.nbytes for a in held)

    def known(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of `keys` is a live or a done forecast."""
        return _search(self._sorted, keys)[1] | _search(self._done, keys)[1]

    def finish(self, rows: np.ndarray) -> None:
        """Drop the forecasts at `rows` (live ones, every step joined), keeping their keys."""
        if not len(rows):
            return
        keys = np.sort(self._keys[rows])
        self._done = np.insert(self._done, np.searchsorted(self._done, keys), keys)
        self.drop(rows)

    def forget_done(self, stale: np.ndarray) -> None:
        """Forget the done forecasts' keys where `stale` (a mask over `done_keys`) is set."""
        if stale.any():
            self._done = self._done[~stale]

    @property
    def done_keys(self) -> np.ndarray:
        return self._done

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The row of each live forecast with one of `keys`, -1 where there is none."""
        at, found = _search(self._sorted, keys)
        return np.where(found, self._rows[at], -1) if len(self._sorted) else at

    def _reindex(self) -> None:
        live = np.flatnonzero(self.keys >= 0)
        order = np.argsort(self.keys[live], kind="stable")
        self._sorted, self._rows = self.keys[live][order], live[order]

    def _arrays(self) -> list[tuple[str, np.ndarray]]:
        named = [("_keys", self._keys), ("_codes", self._codes), ("_origins", self._origins),
                 ("_values", self._values), ("_joined", self._joined)]  # fmt: skip
        return named

    def _resize(self, capacity: int, rows: np.ndarray | slice) -> None:
        """New arrays of `capacity` rows holding `rows` of the current ones, in order."""
        for name, old in self._arrays():
            kept = old[rows]
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[: len(kept)] = kept
            setattr(self, name, new)
        for bounds in (self._lower, self._upper):
            for level, old in bounds.items():
                kept = old[rows]
                bounds[level] = np.zeros((capacity, self.horizon), np.float32)
                bounds[level][: len(kept)] = kept

    def append(
        self,
        keys: np.ndarray,
        codes: np.ndarray,
        origins: np.ndarray,
        values: np.ndarray,
        bounds: dict[str, tuple[np.ndarray, np.ndarray]],
    ) -> None:
        n = len(keys)
        if not n:
            return
        reused, self._free = self._free[:n], self._free[n:]
        start, end = self.size, self.size + n - len(reused)
        if end > len(self._keys):
            self._resize(max(64, end, int(len(self._keys) * self.GROWTH)), slice(0, start))
        at = np.concatenate([reused, np.arange(start, end)])
        self._keys[at], self._codes[at], self._origins[at] = keys, codes, origins
        self._values[at], self._joined[at] = values, False
        for level in self.levels:
            lower, upper = bounds[level]
            self._lower[level][at], self._upper[level][at] = _outward(lower, -1), _outward(upper, 1)
        self.size = end
        order = np.argsort(keys, kind="stable")
        where = np.searchsorted(self._sorted, keys[order])
        self._sorted = np.insert(self._sorted, where, keys[order])
        self._rows = np.insert(self._rows, where, at[order])

    def drop(self, rows: np.ndarray) -> None:
        """Forget the forecasts at positions `rows` (live ones): their slots are reused."""
        if not len(rows):
            return
        gone = np.searchsorted(self._sorted, self._keys[rows])
        self._sorted, self._rows = np.delete(self._sorted, gone), np.delete(self._rows, gone)
        self._keys[rows] = -(rows + 1)  # unique, and no actual's key is negative
        self._free = np.concatenate([self._free, rows])
        if self.live * 2 < len(self._keys) and len(self._keys) > 64:  # give memory back
            live = np.flatnonzero(self.keys >= 0)
            self._resize(max(64, int(len(live) * self.GROWTH)), live)
            self.size, self._free = len(live), np.zeros(0, np.int64)
            self._reindex()


def _search(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in `sorted_keys`, whether it is there) of each of `keys`; positions are -1
    when `sorted_keys` is empty."""
    if not len(sorted_keys):
        return np.full(len(keys), -1, np.int64), np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return at, sorted_keys[at] == keys


def _outward(bounds: np.ndarray, direction: int) -> np.ndarray:
    """Interval bounds as float32, each rounded away from the interval's inside (`direction`
    -1: a lower bound, down; 1: an upper bound, up): half the bytes of a pending forecast's
    bounds, and the float32 interval always holds the float64 one, so coverage can count an
    actual within one float32 step (about 6e-8 relative) outside a bound as inside, and never
    the reverse. (The values, whose errors make the MAE, stay float64.)"""
    toward = np.float32(np.inf * direction)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN (no bound) stays NaN; beyond float32: ±inf
        rounded = bounds.astype(np.float32)
        inward = rounded > bounds if direction < 0 else rounded < bounds
    return np.where(inward, np.nextafter(rounded, toward), rounded)


class AccuracyTracker:
    """Pending forecasts and rolling errors per model version, joined per micro-batch with
    array operations (a hash lookup of every (actual, step) pair). Not thread-safe: the
    `StreamMonitor` serialises calls."""

    def __init__(self, horizon: int, step: pd.Timedelta, window: int, levels: Sequence[float] = ()):
        self.horizon = horizon
        self.step_ns = int(step.value)
        self.window = window
        self.levels = [f"{level:g}" for level in levels]  # the records' keys: "80", "95"
        self.codes: dict[str, int] = {}  # entity → code
        self.latest = np.zeros(0, np.int64)  # per code: latest actual's step (_NO_TIME: none yet)
        self.base: int | None = None  # the first step seen, to keep keys small
        self.pending: dict[int, _Pending] = {}
        self.versions: dict[int, RollingErrors] = {}
        self.coverage: dict[int, dict[str, RollingErrors]] = {}  # 1.0 inside, 0.0 outside
        self.counts = AccuracyCounts()
        self.latest_event_time: int | None = None  # ns

    def _code(self, entity: str) -> int:
        code = self.codes.get(entity)
        if code is None:
            code = self.codes[entity] = len(self.codes)
            if code >= len(self.latest):
                self.latest = np.concatenate([self.latest, np.full(max(16, code), _NO_TIME)])
        return code

    def _keys(self, codes: np.ndarray, steps: np.ndarray) -> np.ndarray:
        if self.base is None:
            self.base = int(steps.min())
        return codes * _KEY_SHIFT + (steps - self.base + 2**31)

    def _unkey(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, steps) of keys `_keys` made."""
        assert self.base is not None
        return keys // _KEY_SHIFT, keys % _KEY_SHIFT - 2**31 + self.base

    # -- forecasts ------------------------------------------------------------------------

    def add_forecasts(self, records: list[Prediction]) -> int | None:
        """Remember prediction records until their actuals arrive (a replayed record is kept
        once); returns the model version of the last readable record."""
        codes, times, versions, values, kept = [], [], [], [], []
        code_of = self.codes
        for rec in records:
            try:
                entity, time, version, row = (
                    str(rec["entity"]),
                    rec["event_time"],
                    int(rec["model_version"]),
                    rec["values"],
                )
                if len(row) != self.horizon:
                    raise ValueError(f"{len(row)} steps, expected {self.horizon}")
            except (KeyError, TypeError, ValueError) as e:
                self._invalid(rec, e)
                continue
            code = code_of.get(entity)
            codes.append(self._code(entity) if code is None else code)
            times.append(time)
            versions.append(version)
            values.append(row)
            kept.append(rec)
        if not codes:
            return None
        try:
            value_arr = np.asarray(values, dtype=float)
            ok = np.isfinite(value_arr).all(axis=1)
        except (TypeError, ValueError):  # find the records with non-numeric values
            ok = np.array([_numbers(row) for row in values])
            value_arr = np.asarray(
                [row if good else [0.0] * self.horizon for row, good in zip(values, ok, strict=True)], float
            )
        if not ok.all():
            for i in np.flatnonzero(~ok):
                self._invalid(kept[i], ValueError("non-numeric or non-finite forecast values"))
            keep = np.flatnonzero(ok)
            codes, times, versions = (
                [codes[i] for i in keep],
                [times[i] for i in keep],
                [versions[i] for i in keep],
            )
            value_arr = value_arr[ok]
            if not codes:
                return None
        readable = np.flatnonzero(ok)
        bounds = {
            level: (lower[readable], upper[readable]) for level, (lower, upper) in self._bounds(kept).items()
        }
        steps = _ns_array(times) // self.step_ns
        code_arr, version_arr = np.asarray(codes, np.int64), np.asarray(versions)
        keys = self._keys(code_arr, steps)
        for version in np.unique(version_arr):
            pending = self.pending.get(int(version))
            if pending is None:
                pending = self.pending[int(version)] = _Pending(self.horizon, levels=self.levels)
            rows = np.flatnonzero(version_arr == version)
            _, first = np.unique(keys[rows], return_index=True)  # a record replayed in one batch
            rows = rows[np.sort(first)]
            rows = rows[~pending.known(keys[rows])]  # ... or in an earlier one (pending or done)
            pending.append(
                keys[rows],
                code_arr[rows],
                steps[rows],
                value_arr[rows],
                {level: (lower[rows], upper[rows]) for level, (lower, upper) in bounds.items()},
            )
        return versions[-1]

    def _bounds(self, records: list[Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Lower and upper bounds per tracked level, (records, H); NaN where a record has none
        (a model without intervals, another level, unreadable bounds)."""
        out = {}
        for level in self.levels:
            try:  # the usual batch: every record has the level's bounds, one array each way
                bands = [rec["intervals"][level] for rec in records]
                lower = np.array([b["lower"] for b in bands], dtype=np.float64)
                upper = np.array([b["upper"] for b in bands], dtype=np.float64)
                if lower.shape == upper.shape == (len(records), self.horizon):
                    out[level] = (lower, upper)
                    continue
            except (KeyError, TypeError, ValueError, IndexError):
                pass
            lower = np.full((len(records), self.horizon), np.nan)
            upper = np.full((len(records), self.horizon), np.nan)
            for i, rec in enumerate(records):
                band: Any = (rec.get("intervals") or {}).get(level) if isinstance(rec, dict) else None
                try:
                    lo = np.asarray(band["lower"], dtype=np.float64)
                    hi = np.asarray(band["upper"], dtype=np.float64)
                except (KeyError, TypeError, ValueError):
                    continue
                if lo.shape == hi.shape == (self.horizon,):
                    lower[i], upper[i] = lo, hi
            out[level] = (lower, upper)
        return out

    def _invalid(self, record: Any, error: Exception) -> None:
        self.counts.invalid_forecasts += 1
        log.warning(
            "accuracy: unreadable prediction record (%s: %s): %r", type(error).__name__, error, record
        )

    # -- actuals --------------------------------------------------------------------------

    def add_actuals(self, events: list[Event]) -> set[int]:
        """Join observations with pending forecasts; returns the model versions that got errors."""
        if not events:
            return set()
        n, horizon = len(events), self.horizon
        code_of = self.codes
        codes = np.fromiter((code_of.get(e.entity, -1) for e in events), np.int64, n)
        for i in np.flatnonzero(codes < 0):
            codes[i] = self._code(events[i].entity)
        steps = np.fromiter((e.time.value for e in events), np.int64, n) // self.step_ns
        actual = np.fromiter((e.value for e in events), float, n)
        # The entity's latest actual before each one, in batch order.
        previous = np.maximum(self.latest[codes], _earlier_max(codes, steps))
        seen = previous != _NO_TIME
        self.counts.actuals += n
        self.counts.out_of_order += int((seen & (steps < previous)).sum())
        joined = np.zeros(n, np.int64)
        updated = set()
        h = np.arange(1, horizon + 1)
        for version, pending in self.pending.items():
            if not pending.live:
                continue
            wanted = self._keys(codes[:, None], steps[:, None] - h[None, :])
            position = pending.find(wanted.ravel()).reshape(n, horizon)
            row, col = np.nonzero(position >= 0)  # row: the actual; col: step - 1 (row-major order)
            hit = position[row, col]
            fresh = ~pending.joined[hit, col]
            row, col, hit = row[fresh], col[fresh], hit[fresh]
            _, first = np.unique(hit * horizon + col, return_index=True)  # one actual per (forecast, step)
            first = np.sort(first)
            row, col, hit = row[first], col[first], hit[first]
            if not len(row):
                continue
            pending.joined[hit, col] = True
            rolling = self.versions.get(version)
            if rolling is None:
                rolling = self.versions[version] = RollingErrors(horizon, self.window)
            rolling.add(col + 1, np.abs(pending.values[hit, col] - actual[row]))
            self._add_coverage(version, pending, hit, col, actual[row])
            joined += np.bincount(row, minlength=n)
            updated.add(version)
            touched = np.sort(hit)  # the rows this batch joined, once each (sorting beats np.unique here)
            touched = touched[np.r_[True, touched[1:] != touched[:-1]]]
            pending.finish(touched[pending.joined[touched].all(axis=1)])
        self.counts.joined += int(joined.sum())
        self._account_unmatched(events, joined == 0, steps, previous, seen)
        np.maximum.at(self.latest, codes, steps)
        newest = int(steps.max()) * self.step_ns
        if self.latest_event_time is None or newest > self.latest_event_time:
            self.latest_event_time = newest
        self._expire()
        return updated

    def _add_coverage(
        self, version: int, pending: _Pending, hit: np.ndarray, col: np.ndarray, actual: np.ndarray
    ) -> None:
        for level in self.levels:
            lower, upper = pending.lower[level][hit, col], pending.upper[level][hit, col]
            bounded = np.isfinite(lower) & np.isfinite(upper)
            if not bounded.any():
                continue
            inside = (actual >= lower) & (actual <= upper)
            by_level = self.coverage.setdefault(version, {})
            rolling = by_level.get(level)
            if rolling is None:
                rolling = by_level[level] = RollingErrors(self.horizon, self.window)
            rolling.add(col[bounded] + 1, inside[bounded].astype(float))

    def _account_unmatched(
        self, events: list[Event], none: np.ndarray, steps: np.ndarray, previous: np.ndarray, seen: np.ndarray
    ) -> None:
        reasons = np.where(
            ~seen | (steps > previous),
            "no_forecast",
            np.where(steps == previous, "duplicate", "out_of_order"),
        )
        unmatched = [(str(reasons[i]), events[i]) for i in np.flatnonzero(none)]
        for reason, _ in unmatched:
            self.counts.unmatched[reason] += 1
        self._log_unmatched(unmatched)

    def _expire(self) -> None:
        """Drop forecasts whose every target is older than the latest actual minus the horizon,
        and the keys of done forecasts as old."""
        for pending in self.pending.values():
            done = pending.done_keys
            if len(done) and self.base is not None:  # a done forecast's entity has a latest actual
                codes, origins = self._unkey(done)
                pending.forget_done(origins < self.latest[codes] - 2 * self.horizon)
            if not pending.live:
                continue
            latest = self.latest[pending.codes]
            gone = (pending.keys >= 0) & (latest != _NO_TIME) & (pending.origins < latest - 2 * self.horizon)
            if gone.any():
                self.counts.expired_steps += int((~pending.joined[gone]).sum())
                pending.drop(np.flatnonzero(gone))

    @property
    def pending_count(self) -> int:
        return sum(p.live for p in self.pending.values())

    def _log_unmatched(self, unmatched: list[tuple[str, Event]]) -> None:
        if not unmatched:
            return
        reasons = Counter(r for r, _ in unmatched)
        first = {r: ev for r, ev in reversed(unmatched)}
        detail = "; ".join(f"{r} {n} (e.g. {first[r].entity} at {first[r].time})" for r, n in reasons.items())
        # Actuals without a forecast are normal while a stream warms up; the others are not.
        level = logging.DEBUG if set(reasons) == {"no_forecast"} else logging.INFO
        log.log(level, "accuracy: actuals that joined no forecast: %s", detail)

    # -- figures --------------------------------------------------------------------------

    def figures(self) -> list[dict[str, Any]]:
        """Per model version: rolling MAE overall and by step, with the error counts, and the
        rolling interval coverage per level (`coverage["80"]`: `value` overall, the mean of
        the per-step shares; `by_step`; `n`, `n_by_step` as for the MAE)."""
        out = []
        for version in sorted(self.versions):
            rolling = self.versions[version]
            mae = rolling.figure()
            out.append(
                {
                    "model_version": version,
                    "mae": mae["value"],
                    "n": mae["n"],
                    "mae_by_step": mae["by_step"],
                    "n_by_step": mae["n_by_step"],
                    "errors_total": rolling.total,
                    "coverage": {
                        level: cov.figure() for level, cov in sorted(self.coverage.get(version, {}).items())
                    },
                }
            )
        return out


def _ns_array(values: list[Any]) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of ISO time strings (the stream's records) or timestamps."""
    try:
        return np.asarray(values, dtype="datetime64[ns]").astype(np.int64)
    except (ValueError, TypeError):
        pass  # offsets and other forms pandas understands
    times = pd.to_datetime(pd.Series(values), utc=True)
    return times.dt.tz_localize(None).to_numpy("datetime64[ns]").astype(np.int64)


def _numbers(row: Any) -> bool:
    try:
        return bool(np.isfinite(np.asarray(row, dtype=float)).all())
    except (TypeError, ValueError):
        return False
