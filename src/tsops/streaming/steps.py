"""The per-event steps every stream engine shares (the python processor and the Spark engine):
apply one validated event to its entity's state, and turn forecasts into prediction records.
Pure functions over state and settings, no I/O, so both engines compute the same thing."""

from __future__ import annotations

from typing import Any

import numpy as np

from tsops.features.definitions import EntityState, FeatureSet
from tsops.features.engines import update
from tsops.settings import SeriesSettings, StreamSettings
from tsops.streaming.events import Event, EventError

FeatureRow = list[Any]  # entity, time, value, *feature values (the offline/online column order)


def apply_event(
    features: FeatureSet,
    series: SeriesSettings,
    stream: StreamSettings,
    state: EntityState,
    ev: Event,
) -> list[tuple[FeatureRow, dict[str, float]]]:
    """Apply the event (and fill any skipped steps per `schema.gaps`); one feature row per step
    applied, as the batch engine would have computed it on the regular series. Raises
    `EventError` (duplicate, late, gap) and leaves the state unchanged when it does."""
    step = series.step
    points = [(ev.time, ev.value)]
    if state.last_time is not None:
        if ev.time <= state.last_time:
            kind = "duplicate" if ev.time == state.last_time else "late"
            raise EventError(kind, f"{ev.entity} already applied up to {state.last_time}", series.time)
        gap = int((ev.time - state.last_time) / step)
        if gap > 1:
            if series.gaps == "refuse" or gap - 1 > stream.max_gap_steps:
                raise EventError("gap", f"{gap - 1} missing step(s) before {ev.time}", series.time)
            last = state.values[-1]
            fills = [
                (
                    state.last_time + step * k,
                    last + (ev.value - last) * k / gap if series.gaps == "interpolate" else last,
                )
                for k in range(1, gap)
            ]
            points = [*fills, *points]
    out = []
    for t, v in points:
        feats = update(features, state, t, v)
        out.append(([ev.entity, t, v, *(feats[n] for n in features.names)], feats))
    return out


def prediction_records(
    events: list[Event],
    forecasts: np.ndarray,
    *,
    series: SeriesSettings,
    model: str,
    version: int,
    latencies_ms: list[float],
) -> list[dict[str, Any]]:
    """One record per event: the horizon's target times and values, the model version, and an
    idempotency key (entity, event time, model version) so a replayed batch rewrites the same
    record."""
    if not events:
        return []
    horizon = forecasts.shape[1]
    origins = np.array([ev.time.to_datetime64() for ev in events], dtype="datetime64[ns]")
    offsets = np.arange(1, horizon + 1) * series.step.to_timedelta64()
    targets = np.datetime_as_string(origins[:, None] + offsets[None, :], unit="s").tolist()
    values = np.asarray(forecasts, dtype=float).tolist()
    return [
        {
            "key": f"{ev.entity}|{ev.time.isoformat()}|{version}",
            "entity": ev.entity,
            "event_time": ev.time.isoformat(),
            "target_times": row_targets,
            "values": row_values,
            "model": model,
            "model_version": version,
            "latency_ms": round(latency, 3),
        }
        for ev, row_values, row_targets, latency in zip(events, values, targets, latencies_ms, strict=True)
    ]
