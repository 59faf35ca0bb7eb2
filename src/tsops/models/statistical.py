"""The field's statistical baselines, from Nixtla's statsforecast (not reimplemented): AutoETS,
AutoTheta and MSTL, forecast at every backtest origin of every entity, each refit at that
origin on the latest `backtest.baseline_window` observations (what a forecaster would run in
production: a bounded window, refit as data arrives).

A fit that fails (a constant series, too few points, a numerical error) is reported with the
entity and the reason, and that origin falls back to the seasonal naive; it never stops the
training.

The fits are independent, and statsforecast's compiled ETS and statsmodels' STL hold the GIL
(two threads fit no faster than one: docs/benchmarks.md), so they run in
`backtest.baseline_jobs` processes, started by a fork server: the training process, which
holds torch's threads, is never forked. This module imports no more than numpy and pandas,
so a fitting process starts quickly.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from tsops.errors import ModelError
from tsops.models.baselines import seasonal_naive
from tsops.models.intervals import label
from tsops.records import utc_ns

if TYPE_CHECKING:
    from tsops.models.dataset import TrainingData

STATISTICAL = ("autoets", "autotheta", "mstl")


def make_model(name: str, seasons: Sequence[float], length: int) -> Any:
    """The statsforecast model `name` for these seasons, fit on `length` observations."""
    from statsforecast.models import MSTL, AutoETS, AutoTheta

    main = max(1, round(seasons[0]))
    if name == "autoets":
        return AutoETS(season_length=main)
    if name == "autotheta":
        return AutoTheta(season_length=main)
    if name == "mstl":
        # MSTL needs two cycles of each season in its window; longer seasons are left out
        periods = sorted({round(s) for s in seasons if 1 < round(s) and 2 * round(s) < length})
        return MSTL(season_length=periods or [main])
    raise ValueError(f"unknown statistical baseline {name!r}; choose from {list(STATISTICAL)}")


@dataclass
class Failure:
    model: str
    entity: str
    origins: int  # origins of this entity whose fit failed (they use the seasonal naive)
    of: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.model} failed for entity {self.entity!r} at {self.origins} of {self.of} origins "
            f"({self.reason}); those use the seasonal naive"
        )


@dataclass
class StatisticalBacktest:
    predictions: dict[str, np.ndarray]  # model -> (test rows, horizon), aligned with data.test
    seconds: dict[str, float]  # model -> total fitting and forecasting time (summed over processes)
    fits: dict[str, int]  # model -> fits made
    failures: list[Failure] = field(default_factory=list)
    # model -> level ("80") -> (lower, upper), statsforecast's own intervals; NaN where it failed
    intervals: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    wall_seconds: float = 0.0  # what fitting them all took, start to end
    processes: int = 1  # the processes that fitted them (1: the calling one)


# Origins one task fits: small enough to share the work out evenly, large enough that sending
# the windows costs nothing beside the fits (one fit takes 0.03-0.6 s: docs/benchmarks.md).
CHUNK = 8
# Fewer fits than this run in the training process: a fitting process costs ~1 s to start.
MIN_PARALLEL_FITS = 48


@dataclass(frozen=True)
class _Chunk:
    name: str  # the model
    entity: str
    rows: np.ndarray  # test rows, aligned with data.test
    windows: list[np.ndarray]  # the observations each of those origins refits on


def run(
    data: TrainingData,
    names: Sequence[str],
    *,
    seasons: Sequence[float],
    horizon: int,
    window: int,
    levels: Sequence[float] = (),
    jobs: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> StatisticalBacktest:
    """Forecast every test origin of `data` with each model in `names`, refitting per origin;
    with `levels` (percent), also statsforecast's prediction intervals at those levels. `jobs`
    processes fit them (0: one per core; 1: this process)."""
    entity_col, time_col, target_col = data.history.columns[:3]
    features = data.test.features
    rows_by_entity = features.groupby(features[entity_col].astype(str), sort=False).indices
    naive = seasonal_naive(features, horizon, max(1, round(seasons[0])))
    out = StatisticalBacktest(
        predictions={n: np.full((len(features), horizon), np.nan) for n in names},
        seconds=dict.fromkeys(names, 0.0),
        fits=dict.fromkeys(names, 0),
        intervals={
            n: {
                label(lv): (
                    np.full((len(features), horizon), np.nan),
                    np.full((len(features), horizon), np.nan),
                )
                for lv in levels
            }
            for n in names
        },
    )
    chunks = list(_chunks(data, names, window, rows_by_entity, utc_ns(features[time_col])))
    total = sum(len(c.rows) for c in chunks)
    fit = partial(_fit_chunk, seasons=list(seasons), horizon=horizon, levels=list(levels))
    failed: dict[tuple[str, str], list[str]] = {}
    out.processes = _workers(jobs, total)
    if chunks and out.processes == 1:
        import statsforecast.models  # noqa: F401  (once, outside the timed fits)
    done, started = 0, time.perf_counter()
    for chunk, (results, seconds) in zip(chunks, _fitted(fit, chunks, out.processes), strict=True):
        for row, (forecast, bounds, error) in zip(chunk.rows, results, strict=True):
            if error is not None:
                failed.setdefault((chunk.name, chunk.entity), []).append(error)
                forecast = naive[row]
            out.predictions[chunk.name][row] = forecast
            for key, (lo, hi) in bounds.items():
                out.intervals[chunk.name][key][0][row] = lo
                out.intervals[chunk.name][key][1][row] = hi
        out.fits[chunk.name] += len(chunk.rows)
        out.seconds[chunk.name] += seconds
        done += len(chunk.rows)
        if on_progress:
            on_progress(done, total)
    out.wall_seconds = time.perf_counter() - started
    of = {(c.name, c.entity): 0 for c in chunks}
    for c in chunks:
        of[(c.name, c.entity)] += len(c.rows)
    out.failures = [Failure(n, e, len(errors), of[(n, e)], errors[0]) for (n, e), errors in failed.items()]
    return out


def _chunks(
    data: TrainingData,
    names: Sequence[str],
    window: int,
    rows_by_entity: dict[Any, np.ndarray],
    origin_ns: np.ndarray,
) -> Iterator[_Chunk]:
    """The fitting tasks, entity by entity and model by model: `CHUNK` origins each."""
    entity_col, time_col, target_col = data.history.columns[:3]
    for entity, group in data.history.groupby(data.history[entity_col].astype(str), sort=False):
        rows = rows_by_entity.get(str(entity))
        if rows is None:
            continue
        values = group[target_col].to_numpy(dtype=float)
        times = utc_ns(group[time_col])
        positions = np.minimum(np.searchsorted(times, origin_ns[rows]), len(times) - 1)
        if not np.array_equal(times[positions], origin_ns[rows]):
            raise ValueError(f"entity {entity!r}: a backtest origin is not in its history")
        windows = [values[max(0, pos + 1 - window) : pos + 1] for pos in positions]
        for name in names:
            for at in range(0, len(rows), CHUNK):
                yield _Chunk(name, str(entity), rows[at : at + CHUNK], windows[at : at + CHUNK])


def _workers(jobs: int, fits: int) -> int:
    """Processes to fit `fits` windows with: `jobs` (0: one per core), or 1 where a process
    would cost more than it saves or none may be started (inside a daemonic process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = cores if jobs == 0 else jobs
    if wanted <= 1 or fits < MIN_PARALLEL_FITS or multiprocessing.current_process().daemon:
        return 1
    return min(wanted, math.ceil(fits / CHUNK))


# One origin's fit: (forecast, bounds per level, None), or (None, {}, the reason it failed).
Fit = tuple[np.ndarray | None, dict[str, tuple[np.ndarray, np.ndarray]], str | None]
FitResult = tuple[list[Fit], float]  # a chunk's fits, and the seconds they took


def _fitted(fit: Callable[[_Chunk], FitResult], chunks: list[_Chunk], workers: int) -> Iterator[FitResult]:
    """Each chunk's results, in order: here, or in `workers` fitting processes."""
    if workers == 1:
        yield from map(fit, chunks)
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tsops.models.statistical", "statsforecast.models"])
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            yield from pool.map(fit, chunks)
    except BrokenProcessPool as e:
        raise ModelError(
            f"a process fitting the statistical baselines ended abruptly ({e}); "
            "set backtest.baseline_jobs: 1 to fit them in the training process",
            "backtest.baseline_jobs",
        ) from e


def _fit_chunk(chunk: _Chunk, *, seasons: list[float], horizon: int, levels: list[float]) -> FitResult:
    """One task, in a fitting process or here."""
    started = time.perf_counter()
    results: list[Fit] = []
    for y in chunk.windows:
        try:
            forecast, bounds = forecast_one(chunk.name, y, seasons=seasons, horizon=horizon, levels=levels)
            results.append((forecast, bounds, None))
        except Exception as e:  # statsforecast raises many types; the reason is reported
            results.append((None, {}, f"{type(e).__name__}: {e}".strip()[:200]))
    return results, time.perf_counter() - started


def forecast_one(
    name: str, y: np.ndarray, *, seasons: Sequence[float], horizon: int, levels: Sequence[float] = ()
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """One fit of `name` on `y`: its `horizon`-step mean forecast (non-finite is a failure) and
    its intervals at `levels`."""
    if len(y) < 3:
        raise ValueError(f"{len(y)} observations")
    if np.ptp(y) == 0:
        raise ValueError("constant series")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(name, seasons, len(y))
        out = model.forecast(
            y=y, h=horizon, level=[int(lv) if lv == int(lv) else lv for lv in levels] or None
        )
    mean = np.asarray(out["mean"], float)
    if mean.shape != (horizon,) or not np.isfinite(mean).all():
        raise ValueError("non-finite forecast")
    bounds = {}
    for lv in levels:
        key = f"{int(lv) if lv == int(lv) else lv}"
        if f"lo-{key}" in out:
            bounds[label(lv)] = (np.asarray(out[f"lo-{key}"], float), np.asarray(out[f"hi-{key}"], float))
    return mean, bounds
