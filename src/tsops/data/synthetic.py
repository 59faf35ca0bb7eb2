"""Reproducible synthetic multi-entity time series (hourly load-like metrics).

Every entity's series is

    value[t] = level + slope * t
               + daily_amplitude  * sin(2*pi * t / 24  + daily_phase)
               + weekly_amplitude * sin(2*pi * t / 168 + weekly_phase)
               + ar1_noise[t]

where ``t`` is the step index counted from ``spec.start`` (periods are in steps, so at ``freq="1h"``
they are one day and one week). Drift, when given, changes the series from ``drift.at`` on.

Reproducibility, and why the stream can continue a series:

* Entity ``i`` draws its parameters from ``numpy.random.default_rng([seed, i, 0])``, so its series
  does not depend on how many entities are generated.
* Its noise innovations come in blocks of ``NOISE_BLOCK`` steps; block ``k`` is drawn from
  ``default_rng([seed, i, 1, k])``. The innovation at step ``t`` therefore depends only on
  ``(seed, i, t)`` and never on the requested range.
* The AR(1) recursion always starts at step 0 (from its stationary distribution), so any range
  ``[start, end)`` equals the same slice of one long generation. Cost is O(end) per entity, which
  is negligible for years of hourly data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tsops.errors import ConfigError

DAILY_PERIOD = 24
WEEKLY_PERIOD = 168
NOISE_BLOCK = 1024

_PARAMETER_STREAM = 0
_NOISE_STREAM = 1


@dataclass(frozen=True)
class DriftSpec:
    """A change in the data-generating process from ``at`` on (inclusive).

    ``level_shift`` is added to the series in units of each entity's noise-free seasonal amplitude
    (``daily_amplitude + weekly_amplitude``), so a shift of 1.0 is equally visible for every
    entity. ``amplitude_scale`` multiplies both seasonal components and ``noise_scale`` the AR(1)
    noise. Timestamps before ``at`` are identical to the series without drift.
    """

    at: pd.Timestamp | str
    level_shift: float = 0.0
    amplitude_scale: float = 1.0
    noise_scale: float = 1.0


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: ``entities`` series of ``periods`` steps at ``freq`` from ``start``.

    ``freq`` must be a fixed duration (``"1h"``, ``"15min"``); seasonal periods are counted in
    steps. The same spec always yields the same frame.
    """

    entities: int = 50
    start: str = "2024-01-01"
    periods: int = 24 * 120
    freq: str = "1h"
    seed: int = 42
    drift: DriftSpec | None = None


def entity_ids(n: int) -> list[str]:
    """Entity ids ``e000``, ``e001``, ...; entity i has the same id whatever ``n`` is."""
    return [f"e{i:03d}" for i in range(n)]


def entity_parameters(spec: SyntheticSpec) -> pd.DataFrame:
    """The per-entity parameters behind :func:`generate`, one row per entity id.

    Columns: ``level``, ``slope`` (per step), ``daily_amplitude``, ``daily_phase``,
    ``weekly_amplitude``, ``weekly_phase``, ``ar_coefficient``, ``noise_std`` (stationary std of
    the AR(1) noise) and ``amplitude`` (``daily_amplitude + weekly_amplitude``, the unit of
    ``DriftSpec.level_shift``).
    """
    _validate(spec)
    params = _draw_parameters(spec.seed, spec.entities)
    frame = pd.DataFrame(params, index=pd.Index(entity_ids(spec.entities), name="entity_id"))
    frame["amplitude"] = frame["daily_amplitude"] + frame["weekly_amplitude"]
    return frame


def generate(
    spec: SyntheticSpec,
    *,
    entity_col: str = "entity_id",
    time_col: str = "timestamp",
    target_col: str = "value",
) -> pd.DataFrame:
    """Generate ``spec.periods`` steps for every entity as a long frame.

    Columns are exactly ``entity_col`` (str), ``time_col`` (tz-naive UTC datetime64) and
    ``target_col`` (float64), sorted by entity then time. Equal to
    ``generate_range(spec, 0, spec.periods)``.
    """
    return generate_range(
        spec, 0, spec.periods, entity_col=entity_col, time_col=time_col, target_col=target_col
    )


def generate_range(
    spec: SyntheticSpec,
    start: int | pd.Timestamp | str,
    end: int | pd.Timestamp | str,
    *,
    entity_col: str = "entity_id",
    time_col: str = "timestamp",
    target_col: str = "value",
) -> pd.DataFrame:
    """Generate steps ``[start, end)`` of the same series, e.g. to continue a stream.

    ``start`` and ``end`` are step indices counted from ``spec.start`` or timestamps on the
    ``spec.freq`` grid; ``end`` may lie beyond ``spec.periods``. The result equals the matching
    slice of a single longer generation, so ``generate`` with ``periods=200`` followed by
    ``generate_range(spec, 200, 400)`` is ``generate`` with ``periods=400``.
    """
    _validate(spec)
    origin = _to_utc_naive(spec.start)
    step = _step_duration(spec.freq)
    first = _to_step(start, origin, step, "start")
    stop = _to_step(end, origin, step, "end")
    if first < 0 or stop < first:
        raise ConfigError(f"need 0 <= start <= end, got start={first}, end={stop}", where="range")

    params = _draw_parameters(spec.seed, spec.entities)
    t = np.arange(first, stop, dtype=np.float64)
    seasonal = _seasonal(params, t)
    noise = _ar1_noise(spec.seed, params, first, stop)
    trend = params["level"][:, None] + params["slope"][:, None] * t[None, :]

    timestamps = pd.date_range(origin + first * step, periods=stop - first, freq=step)
    if spec.drift is not None:
        drift = spec.drift
        after = np.asarray(timestamps >= _to_utc_naive(drift.at))
        amplitude = params["daily_amplitude"] + params["weekly_amplitude"]
        trend = trend + np.where(after, drift.level_shift, 0.0)[None, :] * amplitude[:, None]
        seasonal = seasonal * np.where(after, drift.amplitude_scale, 1.0)[None, :]
        noise = noise * np.where(after, drift.noise_scale, 1.0)[None, :]

    values = (trend + seasonal + noise).astype(np.float64)
    n_steps = stop - first
    return pd.DataFrame(
        {
            entity_col: np.repeat(np.asarray(entity_ids(spec.entities), dtype=object), n_steps),
            time_col: np.tile(timestamps.values, spec.entities),
            target_col: values.reshape(-1),
        }
    )


def _draw_parameters(seed: int, entities: int) -> dict[str, np.ndarray]:
    # A fixed number of draws in a fixed order per entity: adding a parameter later must append
    # draws at the end, or every existing series changes.
    rows = []
    for i in range(entities):
        rng = np.random.default_rng([seed, i, _PARAMETER_STREAM])
        level = rng.uniform(50.0, 150.0)
        rows.append(
            (
                level,
                rng.uniform(-0.1, 0.1) * level / (24 * 120),  # up to +-10 % over 120 days
                rng.uniform(0.05, 0.25) * level,
                rng.uniform(0.0, 2 * np.pi),
                rng.uniform(0.02, 0.10) * level,
                rng.uniform(0.0, 2 * np.pi),
                rng.uniform(0.6, 0.95),
                rng.uniform(0.03, 0.08) * level,
            )
        )
    names = (
        "level",
        "slope",
        "daily_amplitude",
        "daily_phase",
        "weekly_amplitude",
        "weekly_phase",
        "ar_coefficient",
        "noise_std",
    )
    table = np.array(rows, dtype=np.float64).reshape(entities, len(names))
    return {name: table[:, j] for j, name in enumerate(names)}


def _seasonal(params: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
    daily = params["daily_amplitude"][:, None] * np.sin(
        2 * np.pi * t[None, :] / DAILY_PERIOD + params["daily_phase"][:, None]
    )
    weekly = params["weekly_amplitude"][:, None] * np.sin(
        2 * np.pi * t[None, :] / WEEKLY_PERIOD + params["weekly_phase"][:, None]
    )
    return daily + weekly


def _innovations(seed: int, entities: int, stop: int) -> np.ndarray:
    """Standard normal innovations for steps ``[0, stop)``; step t depends only on (seed, i, t)."""
    blocks = -(-stop // NOISE_BLOCK)
    out = np.empty((entities, blocks * NOISE_BLOCK))
    for i in range(entities):
        for k in range(blocks):
            rng = np.random.default_rng([seed, i, _NOISE_STREAM, k])
            out[i, k * NOISE_BLOCK : (k + 1) * NOISE_BLOCK] = rng.standard_normal(NOISE_BLOCK)
    return out[:, :stop]


def _ar1_noise(seed: int, params: dict[str, np.ndarray], first: int, stop: int) -> np.ndarray:
    phi = params["ar_coefficient"]
    std = params["noise_std"]
    z = _innovations(seed, len(phi), stop)
    shock_std = std * np.sqrt(1.0 - phi**2)  # keeps the stationary std at `std`
    noise = np.empty_like(z)
    if stop > 0:
        noise[:, 0] = std * z[:, 0]  # stationary start, so the first days look like the rest
    for t in range(1, stop):  # vectorised over entities; the recursion itself is sequential
        noise[:, t] = phi * noise[:, t - 1] + shock_std * z[:, t]
    return noise[:, first:stop]


def _validate(spec: SyntheticSpec) -> None:
    if spec.entities < 1:
        raise ConfigError(f"must be >= 1, got {spec.entities}", where="synthetic.entities")
    if spec.periods < 0:
        raise ConfigError(f"must be >= 0, got {spec.periods}", where="synthetic.periods")
    if spec.seed < 0:
        raise ConfigError(f"must be >= 0, got {spec.seed}", where="synthetic.seed")


def _step_duration(freq: str) -> pd.Timedelta:
    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"must be a fixed duration such as '1h', got {freq!r}", where="synthetic.freq"
        ) from exc
    if step <= pd.Timedelta(0):
        raise ConfigError(f"must be positive, got {freq!r}", where="synthetic.freq")
    return step


def _to_utc_naive(value: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _to_step(value: int | pd.Timestamp | str, origin: pd.Timestamp, step: pd.Timedelta, name: str) -> int:
    if isinstance(value, int | np.integer):
        return int(value)
    offset = _to_utc_naive(value) - origin
    if offset % step != pd.Timedelta(0):
        raise ConfigError(f"{value} is not on the {step} grid from {origin}", where=name)
    return int(offset // step)
