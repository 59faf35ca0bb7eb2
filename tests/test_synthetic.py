import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from tsops.data.synthetic import (
    DriftSpec,
    SyntheticSpec,
    entity_ids,
    entity_parameters,
    generate,
    generate_range,
)
from tsops.errors import ConfigError

SMALL = SyntheticSpec(entities=5, periods=24 * 14, seed=7)


def _series(frame: pd.DataFrame, entity: str) -> np.ndarray:
    return frame.loc[frame["entity_id"] == entity, "value"].to_numpy()


def test_same_seed_gives_identical_frame():
    pdt.assert_frame_equal(generate(SMALL), generate(SMALL))


def test_different_seed_gives_different_values():
    other = SyntheticSpec(entities=5, periods=24 * 14, seed=8)
    assert not np.allclose(generate(SMALL)["value"], generate(other)["value"])


def test_entity_series_does_not_depend_on_entity_count():
    few = generate(SyntheticSpec(entities=3, periods=500, seed=7))
    many = generate(SyntheticSpec(entities=20, periods=500, seed=7))
    for entity in entity_ids(3):
        np.testing.assert_array_equal(_series(few, entity), _series(many, entity))


def test_continuation_equals_slice_of_longer_generation():
    # 1500 crosses a noise-block boundary, so block stitching is exercised too.
    head = generate(SyntheticSpec(entities=4, periods=200, seed=3))
    tail = generate_range(SyntheticSpec(entities=4, periods=200, seed=3), 200, 1500)
    whole = generate(SyntheticSpec(entities=4, periods=1500, seed=3))
    stitched = (
        pd.concat([head, tail]).sort_values(["entity_id", "timestamp"], kind="stable").reset_index(drop=True)
    )
    pdt.assert_frame_equal(stitched, whole)


def test_range_accepts_timestamps_on_the_grid():
    by_step = generate_range(SMALL, 24, 48)
    by_time = generate_range(SMALL, "2024-01-02", pd.Timestamp("2024-01-03"))
    pdt.assert_frame_equal(by_step, by_time)
    with pytest.raises(ConfigError):
        generate_range(SMALL, "2024-01-02 00:30", 48)


def test_drift_leaves_history_before_at_unchanged_and_shifts_level_after():
    at = pd.Timestamp("2024-01-08")
    base = generate(SMALL)
    drifted = generate(
        SyntheticSpec(entities=5, periods=24 * 14, seed=7, drift=DriftSpec(at=at, level_shift=2.0))
    )
    before = base["timestamp"] < at
    pdt.assert_frame_equal(base[before], drifted[before])

    amplitude = entity_parameters(SMALL)["amplitude"]
    shift = (drifted["value"] - base["value"])[~before].groupby(base.loc[~before, "entity_id"]).mean()
    np.testing.assert_allclose(shift / amplitude, 2.0, rtol=0.05)
    assert (drifted.loc[~before, "value"] > base.loc[~before, "value"]).all()


def test_drift_noise_and_amplitude_scale_change_spread_after_at():
    at = pd.Timestamp("2024-01-08")
    drift = DriftSpec(at=at, amplitude_scale=2.0, noise_scale=3.0)
    base = generate(SMALL)
    drifted = generate(SyntheticSpec(entities=5, periods=24 * 14, seed=7, drift=drift))
    after = base["timestamp"] >= at
    base_spread = base[after].groupby("entity_id")["value"].std()
    drifted_spread = drifted[after].groupby("entity_id")["value"].std()
    assert (drifted_spread > 1.5 * base_spread).all()


def test_frame_has_exact_columns_dtypes_and_order():
    spec = SyntheticSpec(entities=3, periods=48, start="2024-03-01", seed=1)
    frame = generate(spec, entity_col="sensor", time_col="ts", target_col="load")
    assert list(frame.columns) == ["sensor", "ts", "load"]
    assert len(frame) == 3 * 48
    assert frame["load"].dtype == np.float64
    assert pd.api.types.is_datetime64_dtype(frame["ts"]) and frame["ts"].dt.tz is None
    assert frame["sensor"].unique().tolist() == ["e000", "e001", "e002"]
    sorted_frame = frame.sort_values(["sensor", "ts"]).reset_index(drop=True)
    pdt.assert_frame_equal(frame, sorted_frame)
    steps = frame.groupby("sensor")["ts"].diff().dropna()
    assert (steps == pd.Timedelta("1h")).all()
    assert frame["ts"].min() == pd.Timestamp("2024-03-01")


def test_tz_aware_start_is_converted_to_naive_utc():
    frame = generate(SyntheticSpec(entities=1, periods=2, start="2024-01-01 01:00+01:00"))
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 00:00")


def test_values_are_realistic_and_positive():
    frame = generate(SyntheticSpec())
    assert frame["value"].notna().all()
    assert (frame["value"] > 0).all()
    means = frame.groupby("entity_id")["value"].mean()
    assert means.between(40, 170).all()


def test_daily_seasonality_is_present():
    frame = generate(SyntheticSpec(entities=10, periods=24 * 28, seed=11))
    for _, values in frame.groupby("entity_id")["value"]:
        series = values.reset_index(drop=True)
        assert series.autocorr(lag=24) > 0.5
        assert series.autocorr(lag=24) > series.autocorr(lag=12)


def test_entity_ids_are_zero_padded_and_stable():
    assert entity_ids(3) == ["e000", "e001", "e002"]
    assert entity_ids(50)[-1] == "e049"
    assert entity_ids(1500)[:2] == ["e000", "e001"] and entity_ids(1500)[-1] == "e1499"


def test_invalid_spec_is_a_config_error():
    with pytest.raises(ConfigError):
        generate(SyntheticSpec(entities=0))
    with pytest.raises(ConfigError):
        generate(SyntheticSpec(freq="MS"))
