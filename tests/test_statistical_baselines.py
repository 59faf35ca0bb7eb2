"""The statistical baselines are statsforecast's own models, refit at every backtest origin on
the bounded window; one entity whose fit fails is reported and does not stop the backtest."""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsforecast.models import MSTL, AutoETS, AutoTheta

from tsops.models import backtest, statistical
from tsops.models.dataset import Examples, TrainingData

HORIZON, WINDOW, SEASONS = 6, 120, [12.0, 24.0]


def _data() -> TrainingData:
    rng = np.random.default_rng(3)
    n = 300
    t = np.arange(n)
    wavy = 20 + 4 * np.sin(2 * np.pi * t / 12) + 2 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, n)
    series = {"wavy": wavy, "flat": np.full(n, 5.0)}  # a constant series: AutoETS etc. must not run
    times = pd.date_range("2024-01-01", periods=n, freq="h")
    history = pd.concat(
        [pd.DataFrame({"site": k, "t": times, "y": v}) for k, v in series.items()], ignore_index=True
    )
    origins = list(range(240, n - HORIZON, 7))
    rows = []
    labels = []
    for key, values in series.items():
        for p in origins:
            row = {"site": key, "t": times[p].tz_localize("UTC")}  # Feast returns tz-aware times
            row.update({f"lag_{k}": values[p - k] for k in range(24)})
            rows.append(row)
            labels.append(values[p + 1 : p + 1 + HORIZON])
    features = pd.DataFrame(rows)
    empty = Examples(features.iloc[:0], np.zeros((0, HORIZON)))
    return TrainingData(
        train=empty,
        val=empty,
        test=Examples(features, np.array(labels)),
        train_history={k: v[:240] for k, v in series.items()},
        history=history,
        test_window=(features["t"].min(), features["t"].max()),
        data_hash="x",
    )


def test_baselines_equal_statsforecast_called_directly_at_every_origin() -> None:
    data = _data()
    result = statistical.run(data, statistical.STATISTICAL, seasons=SEASONS, horizon=HORIZON, window=WINDOW)
    values = data.history.loc[data.history["site"] == "wavy", "y"].to_numpy()
    wavy_rows = np.flatnonzero(data.test.features["site"].to_numpy() == "wavy")
    origins = range(240, 300 - HORIZON, 7)
    assert len(wavy_rows) == len(origins)
    for row, p in zip(wavy_rows, origins, strict=True):
        y = values[p + 1 - WINDOW : p + 1]
        direct = {
            "autoets": AutoETS(season_length=12).forecast(y=y, h=HORIZON)["mean"],
            "autotheta": AutoTheta(season_length=12).forecast(y=y, h=HORIZON)["mean"],
            "mstl": MSTL(season_length=[12, 24]).forecast(y=y, h=HORIZON)["mean"],
        }
        for name, expected in direct.items():
            np.testing.assert_allclose(result.predictions[name][row], expected, rtol=1e-9, err_msg=name)
    assert all(result.seconds[n] > 0 for n in statistical.STATISTICAL)
    assert result.fits["autoets"] == len(data.test)


def test_a_failed_fit_is_reported_with_its_entity_and_falls_back_to_seasonal_naive() -> None:
    data = _data()
    result = statistical.run(data, ["autoets"], seasons=SEASONS, horizon=HORIZON, window=WINDOW)
    assert [(f.model, f.entity, f.reason) for f in result.failures] == [
        ("autoets", "flat", "ValueError: constant series")
    ]
    assert "entity 'flat'" in str(result.failures[0])
    flat_rows = data.test.features["site"].to_numpy() == "flat"
    np.testing.assert_array_equal(result.predictions["autoets"][flat_rows], 5.0)
    report = backtest.run(
        data, {}, HORIZON, 12, result.predictions, fit_seconds=result.seconds,
        failures=[str(f) for f in result.failures],
    )  # fmt: skip
    assert report.baselines == ["persistence", "seasonal_naive", "autoets"]
    assert np.isfinite(report.overall["autoets"]["mae"]) and len(report.failures) == 1
    best, mae = report.best_baseline()
    assert mae == min(report.overall[b]["mae"] for b in report.baselines)
    assert report.ratio_to_best_baseline(best) == 1.0


def test_fitting_processes_give_what_one_process_gives() -> None:
    data = _data()  # 2 entities × 8 origins × 3 models: 48 fits, enough to start processes for
    kwargs = {"seasons": SEASONS, "horizon": HORIZON, "window": WINDOW, "levels": [80.0]}
    alone = statistical.run(data, statistical.STATISTICAL, jobs=1, **kwargs)
    shared = statistical.run(data, statistical.STATISTICAL, jobs=2, **kwargs)
    assert (alone.processes, shared.processes) == (1, 2)
    for name in statistical.STATISTICAL:
        np.testing.assert_array_equal(shared.predictions[name], alone.predictions[name])
        np.testing.assert_array_equal(shared.intervals[name]["80"][0], alone.intervals[name]["80"][0])
        np.testing.assert_array_equal(shared.intervals[name]["80"][1], alone.intervals[name]["80"][1])
    assert shared.fits == alone.fits
    assert [str(f) for f in shared.failures] == [str(f) for f in alone.failures] != []  # the flat entity
    assert all(shared.seconds[n] > 0 for n in statistical.STATISTICAL) and shared.wall_seconds > 0
