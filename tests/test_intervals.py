"""Conformal prediction intervals per horizon step: on data whose noise is known, the intervals
calibrated on one stretch cover the stated share of a later stretch, with the width the noise
implies; they survive the forecaster's save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsops.models import intervals
from tsops.models.lstm import Forecaster, ForecasterConfig

SEASON, WINDOW, HORIZON, SIGMA = 24, 48, 24, 2.0


def _rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A daily cycle plus Gaussian noise of known sigma; feature rows (lag_0..lag_47) and labels."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 50 + 10 * np.sin(2 * np.pi * t / SEASON) + rng.normal(0, SIGMA, n)
    origins = np.arange(WINDOW - 1, n - HORIZON)
    lags = np.stack([y[origins - k] for k in range(WINDOW)], axis=1)
    labels = np.stack([y[origins + h] for h in range(1, HORIZON + 1)], axis=1)
    return pd.DataFrame(lags, columns=[f"lag_{k}" for k in range(WINDOW)]), labels


def _seasonal_naive_forecaster() -> Forecaster:
    # the network's output layer starts at zero: an untrained forecaster is exactly the seasonal
    # naive, whose error at every step is the difference of two noise draws, N(0, 2·sigma²)
    cfg = ForecasterConfig(
        window_names=[f"lag_{k}" for k in range(WINDOW)],
        context_names=[],
        horizon=HORIZON,
        hidden_size=8,
        num_layers=1,
        dropout=0.0,
        season=SEASON,
        scale=1.0,
        residual_scale=1.0,
    )
    return Forecaster(cfg)


def test_intervals_cover_the_stated_share_of_later_data_with_known_noise(tmp_path: Path) -> None:
    calibration, calibration_labels = _rows(3000, seed=1)
    holdout, holdout_labels = _rows(3000, seed=2)
    forecaster = _seasonal_naive_forecaster().calibrated(calibration, calibration_labels, [80.0, 95.0])

    yhat, bounds = forecaster.predict_intervals(holdout)
    assert set(bounds) == {"80", "95"}
    for level, (lower, upper) in bounds.items():
        assert lower.shape == upper.shape == (len(holdout), HORIZON)
        covered = intervals.coverage(holdout_labels, lower, upper)
        assert covered == pytest.approx(int(level) / 100, abs=0.02), level
        by_step = ((holdout_labels >= lower) & (holdout_labels <= upper)).mean(axis=0)
        assert np.all(np.abs(by_step - int(level) / 100) < 0.06), by_step  # per step too
    # the 80 % half-width is what the noise implies: z(0.9) · sqrt(2) · sigma
    half = np.median(bounds["80"][1] - yhat)
    assert half == pytest.approx(1.2816 * np.sqrt(2) * SIGMA, rel=0.1)
    assert np.all(bounds["95"][1] - bounds["95"][0] > bounds["80"][1] - bounds["80"][0])

    reloaded = Forecaster.load(forecaster.save(tmp_path / "f"))
    again = reloaded.predict_intervals(holdout)[1]
    np.testing.assert_allclose(again["95"][0], bounds["95"][0])


def test_a_forecaster_without_calibration_has_no_intervals() -> None:
    holdout, _ = _rows(200, seed=3)
    assert _seasonal_naive_forecaster().predict_intervals(holdout)[1] == {}


def test_the_intervals_scale_reads_the_whole_window_when_the_network_reads_less() -> None:
    """With `model.input_window` one cycle, the network reads lag_0..lag_23 and the intervals'
    local scale still the whole window (seasonal differences over two cycles): the input window
    does not change how wide the intervals are."""
    calibration, calibration_labels = _rows(1000, seed=4)
    holdout, _ = _rows(200, seed=5)
    whole = _seasonal_naive_forecaster()
    short = Forecaster(
        ForecasterConfig(
            **{
                **whole.cfg.__dict__,
                "window_names": [f"lag_{k}" for k in range(SEASON)],
                "scale_window": [f"lag_{k}" for k in range(WINDOW)],
            }
        ),
        whole.net,
    )
    a = whole.calibrated(calibration, calibration_labels, [80.0])
    b = short.calibrated(calibration, calibration_labels, [80.0])
    assert b.cfg.interval_quantiles == a.cfg.interval_quantiles
    yhat, bounds = b.predict_intervals(holdout)
    expected = intervals.local_scale(holdout.to_numpy(np.float64), SEASON)
    np.testing.assert_allclose(
        bounds["80"][1] - yhat, expected[:, None] * np.asarray(b.cfg.interval_quantiles[0])
    )
    # a value the network does not read, inside the whole window: the forecast stays, the width moves
    moved = holdout.copy()
    moved["lag_30"] += 25.0
    yhat2, bounds2 = b.predict_intervals(moved)
    np.testing.assert_allclose(yhat2, yhat)
    assert np.all(bounds2["80"][1] - yhat2 > bounds["80"][1] - yhat)
    columns = tuple(holdout.columns)
    matrix_bounds = b.interval_bounds(moved.to_numpy(np.float64), columns, yhat2)
    np.testing.assert_allclose(matrix_bounds["80"][1], bounds2["80"][1])
