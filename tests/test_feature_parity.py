"""One feature definition, two engines: replaying history event by event through the
incremental engine gives the batch engine's values to 1e-6 on every row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tsops.data.history import clean_history
from tsops.data.weather import load_weather
from tsops.features.definitions import EntityState, FeatureSet
from tsops.features.engines import batch_features, features_after_many, update
from tsops.settings import FeatureSettings, SeriesSettings

SERIES = SeriesSettings(entity="city", time="date", target="temp")
FEATURES = FeatureSettings(
    window=48,
    lags=[168],
    rolling=[24, 168],
    calendar=["minuteofday", "hour", "dayofweek", "dayofyear", "month"],
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


def test_a_state_holds_its_last_lookback_values_in_order_and_copies_apart() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=40)
    state = EntityState(7)
    for i, v in enumerate(values):
        state.push(pd.Timestamp("2024-01-01") + pd.Timedelta(hours=i), v)
        assert state.array().tolist() == values[max(0, i - 6) : i + 1].tolist()
        assert state.last_value == v and len(state) == min(i + 1, 7)
    snapshot = state.copy()
    state.push(pd.Timestamp("2025-01-01"), 99.0)
    assert snapshot.array().tolist() == values[-7:].tolist()  # the snapshot did not move
    assert EntityState(3, values).array().tolist() == values[-3:].tolist()
    assert EntityState.from_dict(7, state.to_dict()).array().tolist() == [*values[-6:], 99.0]


def test_feature_names_follow_the_settings() -> None:
    fs = FeatureSet(FeatureSettings(window=24, lags=[2, 168], rolling=[6], calendar=["hour"]))
    assert fs.window_names == [f"lag_{k}" for k in range(24)]
    assert fs.names[24:] == ["lag_168", "roll_mean_6", "roll_std_6", "hour_sin", "hour_cos"]
    assert fs.lookback == 169


def test_base_lags_lengthen_the_lookback_but_are_not_the_networks_input() -> None:
    plain = FeatureSet(FeatureSettings(window=24, lags=[168], rolling=[6], calendar=[]))
    fs = FeatureSet(
        FeatureSettings(window=24, lags=[168], base_lags=[168, 169, 340], rolling=[6], calendar=[])
    )
    assert fs.names[24:] == ["lag_168", "lag_169", "lag_340", "roll_mean_6", "roll_std_6"]
    assert fs.context_names == plain.context_names == ["lag_168", "roll_mean_6", "roll_std_6"]
    assert fs.lookback == 341
    # a project without base lags keeps the hash it had before they existed (its models' lineage)
    assert plain.definition_hash() != fs.definition_hash()
    assert FeatureSet(FeatureSettings(window=48, lags=[168], rolling=[24, 168])).definition_hash() == (
        "a85c69e58369799a"
    )


def test_micro_batch_of_many_entities_equals_the_incremental_engine() -> None:
    """The stream's micro-batch path (`features_after_many`: many entities' new rows in one
    pass) equals `update` row by row, for entities with no history, a short one and a full one."""
    fs = FeatureSet(FEATURES)
    rng = np.random.default_rng(7)
    start = pd.Timestamp("2024-03-01")
    blocks, expected = [], []
    for history, new in [(0, 5), (30, 3), (200, 40), (fs.lookback + 7, 1), (400, 0)]:
        state = fs.new_state()
        times = pd.date_range(start, periods=history + new, freq="h")
        values = rng.normal(10, 3, history + new)
        for t, v in zip(times[:history], values[:history], strict=True):
            state.push(t, v)
        prior = state.array().copy()
        rows = [update(fs, state, t, v) for t, v in zip(times[history:], values[history:], strict=True)]
        matrix = pd.DataFrame(rows, columns=fs.names).to_numpy(dtype=float)
        expected.append(matrix.reshape(new, len(fs.names)))
        blocks.append((prior, times[history:].to_numpy(), values[history:]))
    got = features_after_many(fs, blocks)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert np.array_equal(np.isnan(g), np.isnan(e))
        assert np.nanmax(np.abs(g - e), initial=0.0) <= 1e-6
