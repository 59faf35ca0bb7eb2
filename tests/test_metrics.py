"""The backtest's metrics as a forecaster computes them by hand: MASE scales each error by its
own entity's in-sample seasonal naive MAE at the main season, and the seasonal naive baseline
repeats the value one main season back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tsops.models import backtest
from tsops.models.dataset import Examples, TrainingData


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
