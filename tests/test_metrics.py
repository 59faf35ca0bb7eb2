"""The backtest's metrics as a forecaster computes them by hand: MASE scales each error by its
own entity's in-sample seasonal naive MAE at the main season, and the seasonal naive baseline
repeats the value one main season back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tsops.models import backtest, metrics
from tsops.models.dataset import Examples, TrainingData
from tsops.records import utc_ns


def _two_entities() -> TrainingData:
    # in-sample seasonal differences at season 3: A |5-1|,|6-2|,|7-3| → 4;  B 0, 0, |18-12| → 2
    train_history = {"A": np.array([1.0, 2, 3, 5, 6, 7]), "B": np.array([10.0, 10, 12, 10, 10, 18])}
    features = pd.DataFrame(
        {
            "entity": ["A", "B"],
            "time": pd.to_datetime(["2024-01-01", "2024-01-01"]),
            "lag_0": [7.0, 18.0],
            "lag_1": [6.0, 10.0],
            "lag_2": [5.0, 10.0],
        }
    )
    labels = np.array([[8.0, 10.0], [11.0, 9.0]])
    empty = Examples(features.iloc[:0], np.zeros((0, 2)))
    history = pd.DataFrame({"entity": [], "time": [], "y": []})
    return TrainingData(
        train=empty,
        val=empty,
        test=Examples(features, labels),
        train_history=train_history,
        history=history,
        test_window=(features["time"].min(), features["time"].max()),
        data_hash="x",
    )


def test_mase_scales_each_entity_by_its_in_sample_seasonal_naive() -> None:
    data = _two_entities()
    model = {"m": lambda f: np.array([[8.0, 8.0], [12.0, 9.0]])}  # |errors| A: 0, 2;  B: 1, 0
    report = backtest.run(data, model, horizon=2, season=3)

    # seasonal naive at 3: step 1 repeats lag_2, step 2 lag_1 → A [5, 6], B [10, 10]
    np.testing.assert_array_equal(report.predictions["seasonal_naive"], [[5.0, 6.0], [10.0, 10.0]])
    # |errors| A: 3, 4 (scale 4);  B: 1, 1 (scale 2)
    snaive = report.overall["seasonal_naive"]
    assert snaive["mae"] == pytest.approx((3 + 4 + 1 + 1) / 4)
    assert snaive["mase"] == pytest.approx(
        (3 / 4 + 4 / 4 + 1 / 2 + 1 / 2) / 4
    )  # 0.6875, pooled would be 0.75
    np.testing.assert_allclose(
        report.by_step["seasonal_naive"]["mase"], [(3 / 4 + 1 / 2) / 2, (4 / 4 + 1 / 2) / 2]
    )
    assert report.overall["m"]["mase"] == pytest.approx((0 / 4 + 2 / 4 + 1 / 2 + 0 / 2) / 4)
    assert report.overall["persistence"]["mae"] == pytest.approx((1 + 3 + 7 + 9) / 4)


def test_constant_entity_is_scaled_by_the_others_not_by_zero() -> None:
    data = _two_entities()
    data.train_history["B"] = np.full(6, 3.0)
    report = backtest.run(data, {}, horizon=2, season=3)
    assert report.overall["seasonal_naive"]["mase"] == pytest.approx((3 / 4 + 4 / 4 + 1 / 4 + 1 / 4) / 4)


def _one_entity(origins: int, horizon: int = 4, seed: int = 0) -> tuple[TrainingData, np.ndarray]:
    """`origins` hourly origins one step apart (so a horizon's forecasts overlap) of a series
    whose actuals are noise around 100; also the actuals' noise, shape (origins, horizon)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-01-01", periods=origins, freq="h")
    noise = rng.normal(0.0, 1.0, size=(origins, horizon))
    features = pd.DataFrame({"entity": "A", "time": times, "lag_0": 0.0, "lag_1": 0.0, "lag_2": 0.0})
    labels = 100.0 + noise  # the lags are far off: the naive baselines are never the best
    empty = Examples(features.iloc[:0], np.zeros((0, horizon)))
    history = pd.DataFrame({"entity": "A", "time": times, "y": 100.0 + noise[:, 0]})
    data = TrainingData(
        train=empty,
        val=empty,
        test=Examples(features, labels),
        train_history={"A": np.arange(10.0)},
        history=history,
        test_window=(times[0], times[-1]),
        data_hash="x",
    )
    return data, noise


@pytest.mark.parametrize("origins", [30, 600])
def test_the_ratio_and_coverage_come_with_their_spread_over_resampled_origins(origins: int) -> None:
    data, noise = _one_entity(origins)
    truth = data.test.labels
    rng = np.random.default_rng(1)
    reference = truth + rng.normal(0.0, 1.0, size=truth.shape)  # errors |N(0, 1)|
    model = truth + rng.normal(0.0, 0.8, size=truth.shape)  # errors |N(0, 0.8)|: ratio 0.8
    z = 1.2815516  # the 90th percentile of N(0, 1): ± z·0.8 holds 80% of the model's errors
    bounds = {"80": (model - z * 0.8, model + z * 0.8)}
    report = backtest.run(
        data,
        {"model": lambda f: model, "same": lambda f: reference},
        4,
        3,
        {"reference": reference},
        intervals={"model": bounds},
    )

    assert report.best_baseline()[0] == "reference"
    low, high = report.ratio_interval("model")
    assert low < report.ratio_to_best_baseline("model") < high
    assert report.ratio_interval("same") == pytest.approx((1.0, 1.0))  # the same errors: no spread
    cov_low, cov_high = report.coverage_interval["model"]["80"]
    assert cov_low < report.coverage["model"]["80"] < cov_high
    if origins == 600:  # many origins pin both down around what the noise makes them
        assert low < 0.8 < high and high - low < 0.1
        assert cov_low < 0.8 < cov_high and cov_high - cov_low < 0.06
    else:  # 30 origins, four steps each, cannot tell 0.8 from 0.9
        assert high - low > 0.1 and high > 0.85


def test_forecasts_from_overlapping_origins_are_resampled_together() -> None:
    # one shared error per target time: the four forecasts that reach it all carry it, so
    # resampling origins one at a time would understate how much the ratio can move
    data, _ = _one_entity(200)
    truth = data.test.labels
    shared = np.random.default_rng(2).normal(0.0, 1.0, size=len(truth) + 4)
    common = np.stack([shared[i + 1 : i + 5] for i in range(len(truth))])
    model = truth + 2.0 * common
    report = backtest.run(data, {"model": lambda f: model}, 4, 3, {"reference": truth + 1.0})

    blocks = backtest._origin_times(data, 4)[1]
    assert blocks == 4  # hourly origins, one step apart, forecasting four hours
    row_time, picked = metrics.origin_draws(utc_ns(data.test.features["time"]), 1)
    err = np.abs(model - truth).sum(axis=1)
    singly = metrics.percentile_interval(
        metrics.resampled_share(err, np.full(len(err), 4.0), row_time, picked)
    )
    low, high = report.ratio_interval("model")
    assert high - low > singly[1] - singly[0]


def test_a_holdout_of_few_horizons_gets_no_interval_rather_than_a_false_one() -> None:
    # 14 hourly origins forecasting 4 hours hold 3 disjoint horizons: every draw would be
    # nearly the holdout itself, and its spread would look far smaller than it is
    data, _ = _one_entity(14)
    truth = data.test.labels
    model = truth + 1.0
    bounds = {"80": (model - 1.5, model + 1.5)}
    report = backtest.run(
        data, {"model": lambda f: model}, 4, 3, {"ref": truth + 2.0}, intervals={"model": bounds}
    )
    assert report.stretches == 3 < metrics.MIN_STRETCHES
    assert report.ratio_interval("model") is None and report.coverage_interval == {}
    assert report.ratio_to_best_baseline("model") == pytest.approx(0.5)  # the figure itself stays


def test_entities_in_other_time_zones_are_resampled_origin_by_origin() -> None:
    # three sites whose local origins sit 0, 1 and 2 hours apart in UTC, 31 origins each 23
    # hours apart forecasting 24: in UTC their origins interleave an hour apart, yet one
    # horizon spans two origins of each site, so the holdout holds 15 stretches to resample
    horizon, rng = 24, np.random.default_rng(4)
    starts = pd.Timestamp("2024-01-02") + pd.to_timedelta(np.arange(31) * 23, unit="h")
    frames, labels, history = [], [], []
    for offset, site in enumerate("ABC"):
        times = starts + pd.Timedelta(hours=offset)
        frames.append(pd.DataFrame({"entity": site, "time": times, "lag_0": 0.0, "lag_1": 0.0, "lag_2": 0.0}))
        labels.append(100.0 + rng.normal(0.0, 1.0, size=(31, horizon)))
        hourly = pd.date_range(times[0] - pd.Timedelta("24h"), times[-1] + pd.Timedelta("24h"), freq="h")
        history.append(pd.DataFrame({"entity": site, "time": hourly, "y": 100.0}))
    features, truth = pd.concat(frames, ignore_index=True), np.concatenate(labels)
    empty = Examples(features.iloc[:0], np.zeros((0, horizon)))
    data = TrainingData(
        train=empty,
        val=empty,
        test=Examples(features, truth),
        train_history={site: np.arange(30.0) for site in "ABC"},
        history=pd.concat(history, ignore_index=True),
        test_window=(features["time"].min(), features["time"].max()),
        data_hash="x",
    )
    report = backtest.run(data, {"model": lambda f: truth + 1.0}, horizon, 3, {"ref": truth - 2.0})
    assert backtest._origin_times(data, horizon)[1] == 2
    assert report.stretches == 15 and report.ratio_interval("model") is not None


def test_status_words_the_range_and_says_when_there_is_none() -> None:
    from tsops.status import backtest_figures

    figures = {"lstm_mae": 0.9, "seasonal_naive_mae": 1.0, "persistence_mae": 2.0}
    ranged = backtest_figures(
        {**figures, "lstm_vs_best_baseline_low": 0.85, "lstm_vs_best_baseline_high": 1.02}, {}
    )
    assert ranged["lstm_vs_best_baseline_interval"] == [0.85, 1.02]
    assert ranged["verdict"].endswith(
        "MAE ratio 0.900; 90% of resampled origins give 0.850–1.020, "
        "so this holdout cannot tell the two apart"
    )
    few = backtest_figures({**figures, "backtest_stretches": 3.0}, {})
    assert few["lstm_vs_best_baseline_interval"] is None
    assert few["verdict"].endswith(
        "; the origins span 3 horizon(s), too few to say how far this ratio can move"
    )
    older = backtest_figures(figures, {})  # a version trained before the ranges
    assert older["verdict"].endswith("MAE ratio 0.900")
