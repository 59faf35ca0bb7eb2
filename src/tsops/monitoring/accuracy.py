"""Online accuracy: forecasts joined with the actuals that arrive later on the stream.

A forecast record (what the stream processor emits, `streaming.steps.prediction_records`)
made at event time `o` predicts steps `o + 1·Δ … o + H·Δ`. An observation of entity `e` at
time `t` is the actual of every pending forecast of `e` whose target time is `t`; each joined
pair is one absolute error of that forecast's model version at horizon step `h = (t - o)/Δ`.
The rolling MAE per model version and step averages the last `monitoring.accuracy_window`
errors.

Pending forecasts stay bounded: a forecast is dropped once all its targets are older than the
entity's latest actual minus the horizon (its unjoined steps are counted as expired). Each
(forecast, step) joins at most one actual, so duplicates and replays change nothing. An actual
that joins nothing is counted and logged with its reason: `no_forecast`, `duplicate` (the same
time as the entity's latest actual) or `out_of_order` (older than it).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tsops.streaming.events import Event

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
        """Add errors at 1-based horizon `steps` (arrays of equal length)."""
        self.total += len(errors)
        for h in np.unique(steps):
            new = errors[steps == h][-self.window :]
            i = int(h) - 1
            slots = (self.position[i] + np.arange(len(new))) % self.window
            self.errors[i, slots] = new
            self.position[i] = (self.position[i] + len(new)) % self.window
            self.count[i] = min(self.window, self.count[i] + len(new))

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


@dataclass
class _Pending:
    values: list[float]
    joined: int = 0  # bit h set: step h already has its actual


class AccuracyTracker:
    """Pending forecasts per entity and rolling errors per model version. Not thread-safe: the
    `StreamMonitor` serialises calls."""

    def __init__(self, horizon: int, step: pd.Timedelta, window: int):
        self.horizon = horizon
        self.step_ns = int(step.value)
        self.window = window
        self.pending: dict[str, dict[int, dict[int, _Pending]]] = {}  # entity → origin → version
        self.latest: dict[str, int] = {}  # entity → latest actual time (ns)
        self.versions: dict[int, RollingErrors] = {}
        self.counts = AccuracyCounts()
        self.latest_event_time: int | None = None

    # -- forecasts ------------------------------------------------------------------------

    def add_forecasts(self, records: list[dict[str, Any]]) -> int | None:
        """Remember prediction records until their actuals arrive (a replayed record is kept
        once); returns the model version of the last readable record."""
        last = None
        for rec in records:
            try:
                entity = str(rec["entity"])
                origin = _ns(rec["event_time"])
                version = int(rec["model_version"])
                values = [float(v) for v in rec["values"]]
            except (KeyError, TypeError, ValueError) as e:
                self.counts.invalid_forecasts += 1
                log.warning("accuracy: unreadable prediction record (%s: %s): %r", type(e).__name__, e, rec)
                continue
            if len(values) != self.horizon:
                self.counts.invalid_forecasts += 1
                log.warning(
                    "accuracy: prediction record with %d steps, expected %d: %s",
                    len(values),
                    self.horizon,
                    rec.get("key"),
                )
                continue
            by_version = self.pending.setdefault(entity, {}).setdefault(origin, {})
            if version not in by_version:
                by_version[version] = _Pending(values)
            last = version
        return last

    # -- actuals --------------------------------------------------------------------------

    def add_actuals(self, events: list[Event]) -> set[int]:
        """Join observations with pending forecasts; returns the model versions that got errors."""
        versions: list[int] = []
        steps: list[int] = []
        errors: list[float] = []
        unmatched: list[tuple[str, Event]] = []
        touched: set[str] = set()
        step_ns, horizon = self.step_ns, self.horizon
        for ev in events:
            t = int(ev.time.value)
            latest = self.latest.get(ev.entity)
            self.counts.actuals += 1
            if latest is not None and t < latest:
                self.counts.out_of_order += 1
            pending = self.pending.get(ev.entity)
            joined = 0
            if pending:
                for h in range(1, horizon + 1):
                    by_version = pending.get(t - h * step_ns)
                    if by_version is None:
                        continue
                    bit = 1 << h
                    for version, p in by_version.items():
                        if p.joined & bit:
                            continue
                        p.joined |= bit
                        versions.append(version)
                        steps.append(h)
                        errors.append(abs(p.values[h - 1] - ev.value))
                        joined += 1
            if joined == 0:
                if latest is None or t > latest:
                    reason = "no_forecast"
                else:
                    reason = "duplicate" if t == latest else "out_of_order"
                self.counts.unmatched[reason] += 1
                unmatched.append((reason, ev))
            self.counts.joined += joined
            if latest is None or t > latest:
                self.latest[ev.entity] = t
                touched.add(ev.entity)
            if self.latest_event_time is None or t > self.latest_event_time:
                self.latest_event_time = t
        for entity in touched:
            self._expire(entity)
        self._log_unmatched(unmatched)
        if not errors:
            return set()
        v, s, e = np.asarray(versions), np.asarray(steps), np.asarray(errors)
        updated = set(int(x) for x in np.unique(v))
        for version in updated:
            rolling = self.versions.get(version)
            if rolling is None:
                rolling = self.versions[version] = RollingErrors(horizon, self.window)
            mask = v == version
            rolling.add(s[mask], e[mask])
        return updated

    def _expire(self, entity: str) -> None:
        """Drop forecasts whose every target is older than the latest actual minus the horizon."""
        pending = self.pending.get(entity)
        if not pending:
            return
        cutoff = self.latest[entity] - 2 * self.horizon * self.step_ns
        full = (1 << (self.horizon + 1)) - 2  # bits 1..H
        for origin in [o for o in pending if o < cutoff]:
            for p in pending.pop(origin).values():
                self.counts.expired_steps += self.horizon - bin(p.joined & full).count("1")

    @property
    def pending_count(self) -> int:
        return sum(len(by_version) for origins in self.pending.values() for by_version in origins.values())

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
        """Per model version: rolling MAE overall and by step, with the error counts."""
        out = []
        for version in sorted(self.versions):
            rolling = self.versions[version]
            mae, n = rolling.overall()
            by_step = rolling.mae_by_step()
            out.append(
                {
                    "model_version": version,
                    "mae": mae,
                    "n": n,
                    "mae_by_step": [float(x) if np.isfinite(x) else None for x in by_step],
                    "n_by_step": [int(c) for c in rolling.count],
                    "errors_total": rolling.total,
                }
            )
        return out


def _ns(value: Any) -> int:
    """Nanoseconds since the epoch (UTC) of an ISO time string or timestamp."""
    if isinstance(value, str):
        try:
            return int(np.datetime64(value, "ns").astype(np.int64))
        except ValueError:
            pass  # offsets and other forms pandas understands
    ts = pd.Timestamp(value)
    if ts is pd.NaT:
        raise ValueError(f"not a time: {value!r}")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.value)
