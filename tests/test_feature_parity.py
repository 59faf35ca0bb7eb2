"""One feature definition, two engines: replaying history event by event through the
incremental engine gives the batch engine's values to 1e-6 on every row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tsops.data.history import clean_history
from tsops.data.weather import load_weather
from tsops.features.definitions import EntityState, FeatureSet
from tsops.features.engines import batch_features, update
from tsops.settings import FeatureSettings, SeriesSettings

SERIES = SeriesSettings(entity="city", time="date", target="temp")
FEATURES = FeatureSettings(
    window=48, lags=[168], rolling=[24, 168], calendar=["hour", "dayofweek", "dayofyear", "month"]
)


def test_incremental_replay_equals_batch_on_the_weather_history() -> None:
    history, _ = clean_history(load_weather(), SERIES)
    fs = FeatureSet(FEATURES)
    batch = batch_features(history, fs, entity="city", time="date", target="temp")
    states: dict[str, EntityState] = {}
    rows = []
    for city, t, v in history[["city", "date", "temp"]].itertuples(index=False):
        state = states.setdefault(city, fs.new_state())
        rows.append(update(fs, state, pd.Timestamp(t), v))
    stream = pd.DataFrame(rows)[fs.names].to_numpy()
    expected = batch[fs.names].to_numpy()
    assert stream.shape == expected.shape == (len(history), len(fs.names))
    assert np.array_equal(np.isnan(stream), np.isnan(expected))  # same warm-up rows
    assert np.nanmax(np.abs(stream - expected)) <= 1e-6
    assert (~np.isnan(expected)).all(axis=1).sum() > 17000  # most rows have every feature


def test_state_round_trips_through_its_stored_form() -> None:
    fs = FeatureSet(FEATURES)
    state = fs.new_state()
    for i in range(300):
        update(fs, state, pd.Timestamp("2024-01-01") + pd.Timedelta(hours=i), float(i))
    restored = EntityState.from_dict(fs.lookback, state.to_dict())
    t = pd.Timestamp("2024-01-01") + pd.Timedelta(hours=300)
    assert update(fs, restored, t, 1.5) == update(fs, state, t, 1.5)


def test_feature_names_follow_the_settings() -> None:
    fs = FeatureSet(FeatureSettings(window=24, lags=[2, 168], rolling=[6], calendar=["hour"]))
    assert fs.window_names == [f"lag_{k}" for k in range(24)]
    assert fs.names[24:] == ["lag_168", "roll_mean_6", "roll_std_6", "hour_sin", "hour_cos"]
    assert fs.lookback == 169
