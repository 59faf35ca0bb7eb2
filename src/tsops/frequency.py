"""Defaults that follow the data's frequency: seasonal periods, the input window, lags, rolling
windows, calendar terms, the horizon, the backtest holdout and its stride, and how much history
a statistical baseline refits on. Each choice carries a one-line reason that `tsops init`
prints, and each can be overridden (an `init` flag or `tsops.yaml`).

A season is counted in steps and may be fractional (a year of days is 365.25 steps, of weeks
52.18); anything that indexes the history (a lag, the seasonal naive) uses it rounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tsops.errors import DataError

DAY = pd.Timedelta("1D")
WEEK = pd.Timedelta("7D")
HOUR = pd.Timedelta("1h")
A_YEAR = pd.Timedelta("364D")  # history that covers every day of the year (2010 hourly: 364.96 days)

# Calendar span of the backtest holdout, by step; never more than HOLDOUT_SHARE of the history.
HOLDOUT_SHARE = 0.25
MIN_TRAIN_ORIGINS = 10  # training origins the split needs in front of the holdout (dataset.py)
TARGET_ORIGINS = 20  # backtest origins per entity the stride aims for (a stable estimate)
MAX_WINDOW = 1024  # features.window's bound
ONE_CYCLE_INPUT = 24  # the shortest main season whose LSTM reads one cycle (input_window)
BASE_STEPS = 3  # the level lags of the level-adjusted base (models.training.ADJUSTED_FORMS)


def natural_seasons(step: pd.Timedelta) -> tuple[list[float], str]:
    """The calendar cycles that exist at this step, main first, with the reason."""
    name = _step_name(step)
    if step < DAY and DAY % step == pd.Timedelta(0):
        per_day = DAY / step
        if per_day > MAX_WINDOW // 2 and HOUR % step == pd.Timedelta(0):
            per_hour = HOUR / step
            return [per_hour, per_day], f"an hour and a day of {name} steps"
        return [per_day, 7 * per_day], f"a day and a week of {name} steps"
    if step == DAY:
        return [7.0, 365.25], "a week and a year of days"
    if step == WEEK:
        return [52.18], "a year of weeks (365.25 / 7)"
    if pd.Timedelta("28D") <= step <= pd.Timedelta("31D"):
        return [12.0], "a year of months"
    return [1.0], f"no calendar cycle fits a whole number of {name} steps: seasonal naive = persistence"


def _step_name(step: pd.Timedelta) -> str:
    name = pd.tseries.frequencies.to_offset(step).freqstr
    return name if name[0].isdigit() else f"1{name}"


@dataclass
class FrequencyDefaults:
    """Derived settings and why. `reasons` holds one line per choice, in print order."""

    freq: str
    seasons: list[float]
    window: int
    input_window: int | None  # the LSTM's input: the last N window steps (None: all of them)
    lags: list[int]
    base_lags: list[int]  # read by the LSTM's base only, not by its network
    rolling: list[int]
    calendar: list[str]
    horizon: int
    holdout: int
    stride: int
    baseline_window: int
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def main_season(self) -> int:
        return round(self.seasons[0])

    def settings(self) -> dict[str, dict[str, Any]]:
        """The `features`, `model` and `backtest` fields for tsops.yaml."""
        whole = [int(s) if float(s).is_integer() else s for s in self.seasons]  # 24, not 24.0
        season: float | list[float] = whole[0] if len(whole) == 1 else whole
        return {
            "features": {
                "window": self.window,
                "lags": self.lags,
                **({"base_lags": self.base_lags} if self.base_lags else {}),
                "rolling": self.rolling,
                "calendar": self.calendar,
            },
            "model": {
                "horizon": self.horizon,
                "season": season,
                **({"input_window": self.input_window} if self.input_window else {}),
            },
            "backtest": {
                "holdout": self.holdout,
                "stride": self.stride,
                "baseline_window": self.baseline_window,
            },
        }

    def lines(self) -> list[str]:
        return [f"{key}: {reason}" for key, reason in self.reasons.items()]


def derive(
    step: pd.Timedelta,
    *,
    shortest: int,
    span: pd.Timedelta | None = None,
    season: list[float] | None = None,
    horizon: int | None = None,
    window: int | None = None,
    holdout: int | None = None,
) -> FrequencyDefaults:
    """Defaults for a series of regular `step`s whose shortest entity has `shortest` steps and
    covers `span` of calendar time; the keyword overrides are kept as given (and checked)."""
    freq = _step_name(step)
    span = span if span is not None else step * (shortest - 1)
    if season:
        seasons, why = [float(s) for s in season], "given"
    else:
        seasons, why = natural_seasons(step)
    reasons: dict[str, str] = {}
    dropped = [s for s in seasons[1:] if 2 * round(s) + 1 > shortest] if not season else []
    seasons = [s for s in seasons if s not in dropped]
    main = round(seasons[0])
    if main < 1:
        raise DataError(f"season {seasons[0]} is shorter than one step", "model.season")
    if 2 * main + 1 > shortest:
        raise DataError(
            f"the shortest series has {shortest} steps: too short for two cycles of the main season "
            f"({main} steps of {freq}); give --season, or more history",
            "model.season",
        )
    note = f" ({', '.join(_fmt(s) for s in dropped)} dropped: history of {shortest} steps holds < 2 cycles)"
    reasons["season"] = f"{', '.join(_fmt(s) for s in seasons)}: {why}{note if dropped else ''}"

    horizon_given = horizon is not None
    if horizon is None:
        horizon = min(main, 1000) if main > 1 else 1
    reasons["horizon"] = f"{horizon}: " + ("given" if horizon_given else "one main cycle")

    cycles = 4 if main <= 12 else 2
    window_given = window is not None
    if window is None:
        window = max(min(cycles * main, MAX_WINDOW), main, 8)
    if window < main:
        raise DataError(f"window {window} is shorter than the main season ({main} steps)", "features.window")

    long_seasons = [round(s) for s in seasons if round(s) >= 2]
    target_span = _holdout_span(step)
    holdout_given = holdout is not None
    if holdout is None:
        holdout = max(horizon, int(target_span / step))

    def lookback() -> int:
        assert window is not None  # narrowed above; mypy does not carry it into closures
        return max([window, *long_seasons, 1])

    def room() -> int:  # steps left for training origins
        assert horizon is not None and holdout is not None
        return shortest - lookback() - horizon - holdout

    # Fit a short history: the holdout share first, then the longest extra season, then the window.
    if not holdout_given:
        holdout = max(horizon, min(holdout, int(shortest * HOLDOUT_SHARE)))
    while room() < MIN_TRAIN_ORIGINS and len(long_seasons) > 1 and not season:
        gone = long_seasons.pop()
        seasons = [s for s in seasons if round(s) != gone]
        reasons["season"] += f"; {gone} dropped to fit {shortest} steps"
    if room() < MIN_TRAIN_ORIGINS and not window_given and window > main:
        window = max(main, 2, min(window, shortest - horizon - holdout - MIN_TRAIN_ORIGINS))
    if room() < MIN_TRAIN_ORIGINS and not holdout_given:
        holdout = max(horizon, shortest - lookback() - horizon - MIN_TRAIN_ORIGINS)
    if room() < MIN_TRAIN_ORIGINS:
        raise DataError(
            f"the shortest series has {shortest} steps: too short for the input window ({lookback()}), "
            f"the horizon ({horizon}), the backtest holdout ({holdout}) and {MIN_TRAIN_ORIGINS} training "
            f"origins (needs {lookback() + horizon + holdout + MIN_TRAIN_ORIGINS}); give a shorter "
            "--horizon/--holdout/--season, or more history",
            "backtest.holdout" if holdout_given else "model.horizon",
        )
    if horizon > holdout:
        raise DataError(f"horizon {horizon} exceeds the backtest holdout ({holdout})", "model.horizon")

    reasons["window"] = f"{window}: " + (
        "given"
        if window_given
        else f"{window // main if window % main == 0 else window / main:g} main cycle(s)"
    )
    # The network reads one main cycle of the window when the window holds two: measured on
    # half-hourly demand, hourly temperatures and weekly CO2 (docs/benchmarks.md) the holdout MAE
    # is the same as with both cycles, and the forward costs half. The rest of the window stays
    # for the base and the intervals' local scale. Shorter seasons were not measured: all of it.
    input_window = main if main >= ONE_CYCLE_INPUT and window >= 2 * main else None
    reasons["input_window"] = (
        f"{input_window}: the LSTM reads the last main cycle of the {window}-step window (as accurate "
        "as two on three real datasets, half the forward cost)"
        if input_window
        else f"all of the window ({window})"
        + (f": a main season under {ONE_CYCLE_INPUT} steps" if main < ONE_CYCLE_INPUT else "")
    )
    # For each season beyond the window, the value one season before every forecast step
    # (lag s - h for h = 1..H) and the season itself: the seasonal profile of the horizon.
    beyond = [r for r in long_seasons if r >= window]
    lag_set = {k for r in beyond for k in range(max(window, r - horizon), r + 1)}
    parts = []
    if beyond:
        parts.append(
            ", ".join(f"{max(window, r - horizon)}..{r}" for r in beyond)
            + ": one season before each forecast step, for the seasons beyond the window"
        )
    # The level-adjusted base averages two seasons' profiles, each moved by the level difference
    # over the last BASE_STEPS steps. For the seasons the window holds, the few lags it lacks
    # for that (two seasons before each forecast step, and the level lags) are added where the
    # history leaves room; for the longer ones they would double the lookback, so not.
    for r in (r for r in long_seasons if r < window):
        top = 2 * r + BASE_STEPS - 1
        if shortest - (top + 1) - horizon - holdout < MIN_TRAIN_ORIGINS:
            continue
        wanted = {
            k for j in (1, 2) for k in range(j * r - min(horizon, r), j * r + BASE_STEPS) if k >= window
        }
        if wanted - lag_set:
            parts.append(
                f"{min(wanted - lag_set)}..{max(wanted - lag_set)}: the rest of two cycles of {r} before "
                "each forecast step and the level lags, for the two-season base"
            )
        lag_set |= wanted
    lags = sorted(lag_set)
    reasons["lags"] = "; ".join(parts) if parts else "[]: every season lies in the window"
    # For a season beyond the window, the base may instead average two seasons' profiles, each
    # moved by the level difference over the last main cycle: on half-hourly demand that base
    # alone scores 343 where last week's moved by the last steps' difference scores 386 (MAE from
    # every phase of the day, docs/benchmarks.md). Its lags would only add noise to the network's
    # input (hourly temperatures: 2.07 with them, 1.99 without), so the network does not read them.
    base_set: set[int] = set()
    for r in (r for r in beyond if r > main):
        if shortest - (2 * r + main) - horizon - holdout < MIN_TRAIN_ORIGINS:
            continue
        base_set |= {k for k in range(2 * r - min(horizon, r), 2 * r + main) if k >= window}
        base_set |= {k for k in range(r, r + main)}
    base_lags = sorted(k for k in base_set if k >= window and k not in lag_set)
    reasons["base_lags"] = (
        f"{_runs(base_lags)}: two cycles of {', '.join(str(r) for r in beyond if r > main)} before each "
        f"forecast step and before the last {main} steps, for the base only (not the network)"
        if base_lags
        else "[]: "
        + (
            "the history is too short for them"
            if any(r > main for r in beyond)
            else "no season longer than the main one beyond the window"
        )
    )
    rolling = sorted({r for r in long_seasons if r >= 2})
    reasons["rolling"] = f"{rolling}: mean and std over each season" if rolling else "[]: no season"
    calendar = calendar_terms(step, span)
    reasons["calendar"] = f"{calendar}: the cycles a {freq} step resolves within {_days(span)} of history"
    share = holdout / shortest
    reasons["holdout"] = (
        f"{holdout} steps ({_days(step * holdout)}): "
        + (
            "given"
            if holdout_given
            else f"{_days(target_span)} at {freq}, at most {HOLDOUT_SHARE:.0%} of the history"
        )
        + f" ({share:.0%} of the shortest series)"
    )
    positions = holdout - horizon + 1
    most = max(1, min(main, positions // TARGET_ORIGINS))
    stride = spread_stride(positions, most, main)
    origins = -(-positions // stride)
    reasons["stride"] = f"{stride}: {origins} forecast origins per entity (aim ≥ {TARGET_ORIGINS}, " + (
        "≤ one per cycle)"
        if stride == most
        else f"spread over the phases of the {main}-step cycle; {most} would start "
        + ("every origin at the same phase)" if most == main else "fewer of them at other phases)")
    )
    longest = max(long_seasons, default=main)
    available = shortest - holdout
    baseline_window = max(
        min(max(2 * longest + main, 4 * main, 2 * horizon), available), min(available, 2 * main + 1)
    )
    reasons["baseline_window"] = (
        f"{baseline_window}: statistical baselines refit on the latest {baseline_window} steps at each origin"
        " (two longest cycles plus one main cycle, bounded by the history)"
    )
    return FrequencyDefaults(
        freq=freq,
        seasons=seasons,
        window=window,
        input_window=input_window,
        lags=lags,
        base_lags=base_lags,
        rolling=rolling,
        calendar=calendar,
        horizon=horizon,
        holdout=holdout,
        stride=stride,
        baseline_window=baseline_window,
        reasons=reasons,
    )


def spread_stride(positions: int, most: int, main: int) -> int:
    """The backtest stride at most `most` (and at least 4/5 of it: at most a quarter more
    origins) whose origins fall most evenly over the phases of the main cycle: the smallest
    largest gap between the phases the origins visit, then the most phases visited, then the
    longer stride. A stride of the main season itself puts every origin at the same time of day
    (or weekday), and the backtest then measures forecasts made from that phase only: on
    half-hourly demand, the seasonal base's MAE from 23:30 alone is 352 and from every phase 386."""
    if main < 2:
        return most

    def spread(stride: int) -> tuple[int, int, int]:
        phases = sorted({(k * stride) % main for k in range(-(-positions // stride))})
        gaps = [b - a for a, b in zip(phases, phases[1:], strict=False)]
        return max([*gaps, phases[0] + main - phases[-1]]), -len(phases), -stride

    return min(range(most, max(1, -(-4 * most // 5)) - 1, -1), key=spread)


def calendar_terms(step: pd.Timedelta, span: pd.Timedelta) -> list[str]:
    """Calendar terms that change within the step's resolution and repeat within the span."""
    terms = []
    if step < HOUR:
        terms.append("minuteofday")
    elif step < DAY:
        terms.append("hour")
    if step < WEEK and span >= 2 * WEEK:
        terms.append("dayofweek")
    if step < pd.Timedelta("28D") and span >= A_YEAR:
        terms.append("dayofyear")
    elif step >= pd.Timedelta("28D") and span >= A_YEAR:
        terms.append("month")
    return terms


def _holdout_span(step: pd.Timedelta) -> pd.Timedelta:
    if step < HOUR:
        return pd.Timedelta("28D")
    if step < DAY:
        return pd.Timedelta("30D")
    if step < WEEK:
        return pd.Timedelta("365D")
    return pd.Timedelta("730D")


def _runs(steps: list[int]) -> str:
    """Sorted step counts as runs: [1, 2, 3, 7] → "1..3, 7"."""
    runs: list[list[int]] = []
    for k in steps:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in runs)


def _fmt(season: float) -> str:
    return f"{season:g}"


def _days(delta: pd.Timedelta) -> str:
    days = delta / DAY
    if days >= 364:
        return f"{days / 365.25:.1f} years"
    if days >= 1:
        return f"{days:.0f} days"
    return f"{delta / HOUR:g} hours"
