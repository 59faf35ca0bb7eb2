"""`tsops init` derives its defaults from the data's frequency and length, says why, and lets
flags and tsops.yaml override them; data it cannot use is refused naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from tsops.errors import DataError
from tsops.features.definitions import FeatureSet
from tsops.frequency import derive
from tsops.scaffold import init_from_data
from tsops.settings import Project

LONG = 12_000  # steps: long enough that no default is shortened by the history


def _derive(freq: str, shortest: int = LONG):
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    return derive(step, shortest=shortest)


@pytest.mark.parametrize(
    ("freq", "seasons", "horizon", "lags", "base_lags", "calendar"),
    [
        (
            "15min",
            [96, 672],
            96,
            [192, 193, 194, *range(576, 673)],
            [*range(673, 768), *range(1248, 1440)],
            ["minuteofday", "dayofweek"],
        ),  # 125 days: no year
        (
            "30min",
            [48, 336],
            48,
            [96, 97, 98, *range(288, 337)],
            [*range(337, 384), *range(624, 720)],
            ["minuteofday", "dayofweek"],
        ),
        (
            "1h",
            [24, 168],
            24,
            [48, 49, 50, *range(144, 169)],
            [*range(169, 192), *range(312, 360)],
            ["hour", "dayofweek", "dayofyear"],
        ),
        (
            "1D",
            [7, 365.25],
            7,
            list(range(358, 366)),
            [*range(366, 372), *range(723, 737)],
            ["dayofweek", "dayofyear"],
        ),
        ("7D", [52.18], 52, [104, 105, 106], [], ["dayofyear"]),
    ],
)
def test_defaults_follow_the_frequency(freq, seasons, horizon, lags, base_lags, calendar) -> None:
    d = _derive(freq)
    assert d.seasons == seasons
    assert d.horizon == horizon == d.main_season
    assert d.window >= d.main_season
    assert d.lags == lags
    # for the season beyond the window: its two cycles before each forecast step and before the
    # last main cycle (the two-season base moved by the last cycle's level), not in the network
    assert d.base_lags == base_lags
    assert d.settings()["features"].get("base_lags", []) == base_lags
    assert d.rolling == sorted({round(s) for s in seasons})
    assert d.calendar == calendar
    # the holdout is a calendar span, with enough origins and never most of the history
    assert d.horizon <= d.holdout <= 0.25 * LONG
    assert (d.holdout - d.horizon + 1) / d.stride >= 20
    assert set(d.reasons) == {
        "season",
        "horizon",
        "window",
        "input_window",
        "lags",
        "base_lags",
        "rolling",
        "calendar",
        "holdout",
        "stride",
        "baseline_window",
    }


@pytest.mark.parametrize("freq", ["15min", "30min", "1h", "1D", "7D"])
def test_backtest_origins_start_at_every_phase_of_the_main_cycle(freq: str) -> None:
    """A stride of the main season itself starts every origin at the same time of day (or
    weekday): the backtest would measure forecasts from that phase only."""
    d = _derive(freq)
    main, positions = d.main_season, d.holdout - d.horizon + 1
    origins = -(-positions // d.stride)
    phases = sorted({(k * d.stride) % main for k in range(origins)})
    gaps = np.diff([*phases, phases[0] + main])
    assert d.stride % main != 0
    assert len(phases) >= min(main, origins) // 3
    assert gaps.max() <= max(2, 2 * -(-main // origins)), (d.stride, phases)
    assert "phase" in d.reasons["stride"] or d.stride < main


def test_the_lstm_reads_one_main_cycle_where_the_window_holds_two() -> None:
    """The network's input is the last main cycle (half the forward of two, as accurate on the
    forecast-quality data); the rest of the window stays in the features, for the base and the
    intervals' scale. Below a main season of 24 steps it reads the whole window."""
    for freq, main in (("30min", 48), ("1h", 24), ("7D", 52)):
        d = _derive(freq)
        assert d.window == 2 * main and d.input_window == main
        assert d.settings()["model"]["input_window"] == main
    daily = _derive("1D")
    assert daily.input_window is None and "input_window" not in daily.settings()["model"]


def test_hourly_holdout_is_thirty_days_and_daily_one_year() -> None:
    assert _derive("1h").holdout == 720
    assert _derive("1D").holdout == 365
    assert _derive("15min").holdout == 28 * 96


def test_short_series_get_defaults_that_fit_them() -> None:
    d = _derive("1h", shortest=300)  # 12.5 days: a weekly season does not fit twice with the rest
    assert d.seasons == [24]
    assert d.lags == [48, 49, 50] and d.rolling == [24]  # the two-day base's lags fit
    assert d.base_lags == [] and "no season longer than the main one" in d.reasons["base_lags"]
    assert d.holdout <= 75
    assert 300 - max(d.window, d.lags[-1] + 1) - d.horizon - d.holdout >= 10
    assert "dropped" in d.reasons["season"]
    d = _derive("1h", shortest=520)  # the week fits, two weeks and a day before the holdout do not
    assert d.seasons == [24, 168] and d.base_lags == [] and "too short" in d.reasons["base_lags"]


def test_too_short_series_are_refused_naming_the_main_season() -> None:
    with pytest.raises(DataError, match="main season") as e:
        _derive("1h", shortest=40)
    assert e.value.where == "model.season"


def test_overrides_are_kept_and_checked() -> None:
    step = pd.Timedelta("1h")
    d = derive(step, shortest=LONG, season=[12.0], horizon=6, window=36, holdout=100)
    assert (d.seasons, d.horizon, d.window, d.holdout) == ([12.0], 6, 36, 100)
    main_only = derive(step, shortest=LONG, season=[24.0], window=24)  # the main season ends the window
    assert (
        main_only.base_lags == [] and "no season longer than the main one" in main_only.reasons["base_lags"]
    )
    with pytest.raises(DataError, match="shorter than the main season"):
        derive(step, shortest=LONG, season=[48.0], window=24)


def _write_csv(path: Path, times: pd.DatetimeIndex, entities: int = 1) -> Path:
    rng = np.random.default_rng(0)
    frames = [
        pd.DataFrame({"site": f"s{e}", "t": times, "y": rng.normal(size=len(times))}) for e in range(entities)
    ]
    pd.concat(frames).to_csv(path, index=False)
    return path


def test_init_daily_data_writes_daily_defaults_and_prints_why(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "d.csv", pd.date_range("2015-01-01", periods=4 * 365, freq="D"), 2)
    result = run_cli(
        "init", str(tmp_path / "p"), "--data", str(csv), "--time", "t", "--target", "y", "--entity", "site"
    )
    assert result.returncode == 0, result.stderr
    s = Project.load(tmp_path / "p", environ={}).settings
    assert s.model.seasons == [7.0, 365.25] and s.model.main_season == 7 and s.model.horizon == 7
    assert "hour" not in s.features.calendar and "dayofweek" in s.features.calendar
    assert s.features.lags == list(range(358, 366)) and s.backtest.holdout == 365
    out = " ".join(result.stdout.split())
    assert "season: 7, 365.25: a week and a year of days" in out
    assert "horizon: 7: one main cycle" in out
    assert "holdout: 365 steps" in out


def test_init_flags_override_the_derived_defaults(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "h.csv", pd.date_range("2024-01-01", periods=24 * 60, freq="h"))
    result = run_cli(
        "init", str(tmp_path / "p"), "--data", str(csv), "--time", "t", "--target", "y",
        "--season", "24,168", "--horizon", "12", "--holdout", "200",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    s = Project.load(tmp_path / "p", environ={}).settings
    assert s.model.season == [24.0, 168.0] and s.model.horizon == 12 and s.backtest.holdout == 200


def test_irregular_timestamps_are_refused_with_the_reason(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    times = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.cumsum(rng.integers(1, 600, 500)), unit="s")
    csv = _write_csv(tmp_path / "irr.csv", pd.DatetimeIndex(times))
    result = run_cli("init", str(tmp_path / "p"), "--data", str(csv), "--time", "t", "--target", "y")
    assert result.returncode == 2
    assert "irregular" in result.stderr and "--freq" in result.stderr
    assert "Traceback" not in result.stderr


def _hourly_csv(path: Path, values: np.ndarray) -> Path:
    times = pd.date_range("2024-01-01", periods=len(values), freq="h")
    pd.DataFrame({"t": times, "y": values}).to_csv(path, index=False)
    return path


def test_init_keeps_the_base_only_lags_where_their_base_fits_the_history_best(tmp_path: Path) -> None:
    """Two weeks' profiles moved by the last day's level beat every other base on noisy weeks
    whose level wanders from day to day: init keeps their lags and says why. Where the daily
    profile grows from week to week, yesterday's profile does better, and the lags (a longer
    state, a wider online row) are left out."""
    rng = np.random.default_rng(3)
    t = np.arange(24 * 120)
    weekly = np.where((t // 24) % 7 < 5, 10.0, 2.0) * np.sin(2 * np.pi * t / 24) ** 2
    daily_level = np.repeat(rng.normal(0, 0.5, len(t) // 24 + 1).cumsum(), 24)[: len(t)]
    noisy_weeks = _hourly_csv(tmp_path / "w.csv", weekly + daily_level + rng.normal(0, 1.0, len(t)))
    kept = init_from_data(tmp_path / "kept", noisy_weeks, time="t", target="y", on_defaults=lambda d: None)
    assert kept.settings.features.base_lags == [*range(169, 192), *range(312, 360)]
    header = (tmp_path / "kept" / "tsops.yaml").read_text()
    assert "that base fits the history before the holdout best (MAE" in header
    assert "lag_169" not in FeatureSet(kept.settings.features).context_names

    growing = _hourly_csv(tmp_path / "g.csv", np.linspace(1, 5, len(t)) * np.sin(2 * np.pi * t / 24))
    left = init_from_data(tmp_path / "left", growing, time="t", target="y", on_defaults=lambda d: None)
    assert left.settings.features.base_lags == []
    assert "base_lags: []: the base they would serve fits the history before the holdout less well" in (
        (tmp_path / "left" / "tsops.yaml").read_text()
    )
