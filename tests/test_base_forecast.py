"""The LSTM corrects the base forecast that fits the data: the seasonal naive at the season
whose profile repeats, moved to the current level when that is what the data does."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tsops.models.baselines import level_adjusted_naive
from tsops.models.dataset import Examples, TrainingData
from tsops.models.lstm import Forecaster, ForecasterConfig
from tsops.models.training import Base, base_candidates
from tsops.settings import ModelSettings

H = 6


def _data(values: np.ndarray, lags_: list[int] | None = None) -> TrainingData:
    keys = lags_ if lags_ is not None else [*range(51), *range(162, 169)]
    origins = np.arange(max(200, max(keys)), len(values) - H)
    lags = {f"lag_{k}": values[origins - k] for k in keys}
    features = pd.DataFrame(lags)
    labels = np.stack([values[origins + h] for h in range(1, H + 1)], axis=1)
    train = Examples(features, labels)
    return TrainingData(train, train, train, {"a": values}, pd.DataFrame(), (0, 0), "x")  # type: ignore[arg-type]


def _settings(**kw) -> ModelSettings:  # type: ignore[no-untyped-def]
    return ModelSettings(name="m", horizon=H, season=[24, 168], **kw)


def test_a_weekly_profile_makes_the_week_the_base_season() -> None:
    t = np.arange(3000)
    weekday = (t // 24) % 7 < 5
    values = np.where(weekday, 10.0, 2.0) * np.sin(2 * np.pi * t / 24) ** 2
    assert base_candidates(_data(values), _settings()) == [Base(168, False)]


def test_a_wandering_level_adds_the_level_adjusted_base() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    values = np.sin(2 * np.pi * t / 24) + np.cumsum(rng.normal(0, 0.3, len(t)))  # a random-walk level
    [chosen] = base_candidates(_data(values), _settings())
    assert (chosen.season, chosen.adjusted) == (24, True)  # the lowest training MAE
    # without level adjustment, the last value (a season of one step) beats yesterday's profile
    assert base_candidates(_data(values), _settings(base="seasonal")) == [Base(1, False)]


def test_where_no_season_repeats_the_base_is_the_last_value() -> None:
    """A random walk: persistence is the best base, and it is a candidate though 1 is not
    one of the seasons; the untrained network forecasts it exactly."""
    rng = np.random.default_rng(4)
    values = rng.normal(size=3000).cumsum()
    data = _data(values)
    assert base_candidates(data, _settings()) == [Base(1, False)]
    cfg = ForecasterConfig([f"lag_{k}" for k in range(48)], ["lag_168"], H, 8, 1, 0.0, 1, 1.0, 1.0)
    expected = np.repeat(data.train.features["lag_0"].to_numpy()[:, None], H, axis=1)
    np.testing.assert_allclose(Forecaster(cfg).predict(data.train.features), expected)


def test_noisy_weeks_whose_level_wanders_take_two_weeks_moved_by_the_last_days_level() -> None:
    """Averaging two weeks' profiles halves their noise; the level difference over the last
    day (the main cycle) is steadier than over the last steps. That form needs the lags of two
    weeks and a day (features.base_lags); without them the choice is among the others."""
    rng = np.random.default_rng(3)
    t = np.arange(4000)
    weekly = np.where((t // 24) % 7 < 5, 10.0, 2.0) * np.sin(2 * np.pi * t / 24) ** 2
    level = np.repeat(rng.normal(0, 1.0, len(t) // 24 + 1).cumsum(), 24)[: len(t)] * 0.5
    values = weekly + level + rng.normal(0, 1.0, len(t))
    assert base_candidates(_data(values, list(range(360))), _settings()) == [Base(168, True, 2, 24)]
    [without] = base_candidates(_data(values, list(range(169))), _settings())
    assert without.steps in (1, 3)


def test_a_base_says_what_it_is() -> None:
    assert Base(24, False).describe() == "the seasonal naive at 24"
    assert Base(1, False).describe() == "the last value (persistence)"
    assert Base(168, True).describe() == "the last cycle of 168 moved by the last step's level"
    assert Base(336, True, 2, 48).describe() == "the last 2 cycles of 336 moved by the last 48 steps' level"


def test_the_two_season_base_averages_level_adjusted_profiles() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=600).cumsum()
    features = _data(values).train.features
    by_hand = np.mean(
        [
            np.stack([features[f"lag_{j * 24 - h}"] for h in range(1, H + 1)], axis=1)
            + np.mean([features[f"lag_{i}"] - features[f"lag_{i + j * 24}"] for i in range(3)], axis=0)[
                :, None
            ]
            for j in (1, 2)
        ],
        axis=0,
    )
    np.testing.assert_allclose(level_adjusted_naive(features, H, 24, 2, 3), by_hand)
    names = [f"lag_{k}" for k in range(48)]
    cfg = ForecasterConfig(
        names,
        ["lag_48", "lag_49", "lag_50"],
        H,
        8,
        1,
        0.0,
        24,
        1.0,
        1.0,
        level_adjusted=True,
        base_seasons=2,
        base_steps=3,
    )
    np.testing.assert_allclose(Forecaster(cfg).predict(features), by_hand, rtol=1e-6)


def test_an_untrained_level_adjusted_forecaster_is_exactly_its_base() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=600).cumsum()
    data = _data(values)
    names = [f"lag_{k}" for k in range(48)]
    cfg = ForecasterConfig(names, ["lag_168"], H, 8, 1, 0.0, 24, 1.0, 1.0, level_adjusted=True)
    features = data.train.features
    np.testing.assert_allclose(Forecaster(cfg).predict(features), level_adjusted_naive(features, H, 24))
