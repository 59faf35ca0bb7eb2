"""Less variance from the initial weights and the last steps: `model.ensemble` (N networks from
seeds seed, seed+1, ...; the forecast averages their corrections, and the ensemble saves, loads
and warm-starts as one model) and `model.weight_average` (a moving average of the weights is
what validation scores and training keeps); and the share of the network's correction each
forecast step keeps, chosen on the validation origins."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tsops.errors import ModelError
from tsops.models.dataset import Examples, TrainingData
from tsops.models.lstm import Forecaster
from tsops.models.training import correction_weights, fit
from tsops.settings import ModelSettings

H = 4
LAGS = [f"lag_{k}" for k in range(30)]


def _data() -> TrainingData:
    rng = np.random.default_rng(0)
    t = np.arange(700)
    values = np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, len(t)).cumsum() * 0.1
    origins = np.arange(40, len(values) - H)
    features = pd.DataFrame({name: values[origins - int(name[4:])] for name in LAGS})
    labels = np.stack([values[origins + h] for h in range(1, H + 1)], axis=1)
    split = int(len(origins) * 0.8)
    train = Examples(features[:split].reset_index(drop=True), labels[:split])
    val = Examples(features[split:].reset_index(drop=True), labels[split:])
    return TrainingData(train, val, val, {"a": values}, pd.DataFrame(), (0, 0), "x")  # type: ignore[arg-type]


def _rest(data: TrainingData) -> dict:  # type: ignore[type-arg]
    return {
        "train_history": data.train_history,
        "history": data.history,
        "test_window": data.test_window,
        "data_hash": data.data_hash,
    }


FEATURES = SimpleNamespace(window_names=LAGS[:24], context_names=LAGS[24:])


def _settings(**kw) -> ModelSettings:  # type: ignore[no-untyped-def]
    small = {"hidden_size": 8, "epochs": 3, "patience": 3, "threads": 1, "base": "seasonal"}
    plain = {"ensemble": 1, "weight_average": 0.0}  # one network, its own weights; unless kw says
    return ModelSettings(name="m", horizon=H, season=12, **{**small, **plain, **kw})


def _fit(data: TrainingData, init: Forecaster | None = None, **kw) -> Forecaster:  # type: ignore[no-untyped-def]
    return fit(data, FEATURES, _settings(**kw), show_progress=False, init=init).forecaster  # type: ignore[arg-type]


def test_an_ensemble_forecasts_the_mean_of_its_members_and_its_first_member_is_the_single_network(
    tmp_path: Path,
) -> None:
    data = _data()
    single = _fit(data)
    ensemble = _fit(data, ensemble=3)
    assert ensemble.cfg.members == 3
    one = replace(ensemble.cfg, members=1)
    members = [Forecaster(one, net).predict(data.test.features) for net in ensemble.net.members]
    forecast = ensemble.predict(data.test.features)
    np.testing.assert_allclose(forecast, np.mean(members, axis=0), rtol=1e-5, atol=1e-6)
    own = replace(one, correction_weights=single.cfg.correction_weights)
    first = Forecaster(own, ensemble.net.members[0])
    np.testing.assert_array_equal(first.predict(data.test.features), single.predict(data.test.features))
    assert not np.allclose(members[0], members[1])
    loaded = Forecaster.load(ensemble.save(tmp_path / "forecaster"))
    np.testing.assert_array_equal(loaded.predict(data.test.features), forecast)


def test_an_ensemble_warm_starts_member_by_member_and_only_with_as_many_members() -> None:
    data = _data()
    start = _fit(data, ensemble=2)
    later = TrainingData(
        data.train.subset(np.arange(len(data.train)) >= 200), data.val, data.test, **_rest(data)
    )
    tuned = _fit(later, init=start, ensemble=2)
    # its scales too: the weights keep their meaning (the correction's shares are chosen anew)
    assert replace(tuned.cfg, correction_weights=[]) == replace(start.cfg, correction_weights=[])
    assert len(tuned.net.members) == 2
    moved = [
        not np.allclose(a, b)
        for a, b in zip(tuned.net.state_dict().values(), start.net.state_dict().values(), strict=True)
    ]
    assert any(moved)
    with pytest.raises(ModelError, match="members"):
        _fit(data, init=start)


def test_the_weight_average_is_what_validation_scores_and_what_training_keeps() -> None:
    data = _data()
    plain = _fit(data).predict(data.test.features)
    no_memory = _fit(data, weight_average=1e-12).predict(data.test.features)  # the last step's weights
    np.testing.assert_allclose(no_memory, plain, rtol=1e-5, atol=1e-5)
    result = fit(data, FEATURES, _settings(weight_average=0.9), show_progress=False)  # type: ignore[arg-type]
    averaged = result.forecaster.predict(data.test.features)
    assert not np.allclose(averaged, plain, atol=1e-4)
    kept_mae = float(np.mean(np.abs(result.forecaster.predict(data.val.features) - data.val.labels)))
    assert kept_mae == pytest.approx(result.best_val_mae, rel=1e-9)


def test_each_step_keeps_the_share_of_the_correction_validation_prefers(tmp_path: Path) -> None:
    data = _data()
    result = fit(data, FEATURES, _settings(), show_progress=False)  # type: ignore[arg-type]
    kept = result.forecaster
    full = Forecaster(replace(kept.cfg, correction_weights=[]), kept.net)
    base = full.tensors(data.val.features)[2]
    correction = full.predict(data.val.features) - base
    assert kept.cfg.correction_weights == correction_weights(full, data.val)
    assert result.best_val_mae <= float(np.mean(np.abs(correction + base - data.val.labels))) + 1e-12
    # Validation whose actuals are the base plus all, none and half of the correction, and the base
    # moved away from the correction: each step keeps its share.
    shares = np.array([1.0, 0.0, 0.5, 0.0])
    actuals = base + correction * shares - np.array([0, 0, 0, 1.0]) * np.sign(correction)
    assert correction_weights(full, Examples(data.val.features, actuals)) == shares.tolist()
    shrunk = Forecaster(replace(kept.cfg, correction_weights=shares.tolist()), kept.net)
    np.testing.assert_allclose(shrunk.predict(data.val.features), base + correction * shares, rtol=1e-9)
    loaded = Forecaster.load(shrunk.save(tmp_path / "forecaster"))
    np.testing.assert_array_equal(loaded.predict(data.val.features), shrunk.predict(data.val.features))


def test_by_default_training_keeps_the_moving_average_of_the_weights() -> None:
    data = _data()
    defaults = ModelSettings(
        name="m", horizon=H, season=12, hidden_size=8, epochs=3, threads=1, base="seasonal"
    )
    kept = fit(data, FEATURES, defaults, show_progress=False).forecaster  # type: ignore[arg-type]
    averaged = _fit(data, weight_average=0.99)
    plain = _fit(data, weight_average=0.0)
    np.testing.assert_array_equal(kept.predict(data.test.features), averaged.predict(data.test.features))
    assert not np.allclose(kept.predict(data.test.features), plain.predict(data.test.features), atol=1e-4)
