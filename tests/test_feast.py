"""Feast: point-in-time correct training data (no leakage) and the Redis online store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml

from tsops.features.engines import batch_features
from tsops.features.ingest import ingest
from tsops.features.store import FeatureStoreClient
from tsops.models import dataset
from tsops.settings import Project


def test_no_training_row_uses_an_observation_after_its_cutoff(weather_project) -> None:
    client = FeatureStoreClient(weather_project)
    series = weather_project.settings.series
    ent, time, target = series.entity_col, series.time, series.target
    history = client.read_offline()[[ent, time, target]]
    data = dataset.build(client, weather_project.settings.model.horizon)
    step = series.step

    # Labels are strictly after the origin, and training labels end before the held-out tail.
    tail_start = data.test_window[0] + step
    train_origins = pd.to_datetime(data.train.features[time])
    assert (train_origins + step * data.train.labels.shape[1] < tail_start).all()

    # Each sampled row's features equal features computed from history cut at its origin.
    rng = np.random.default_rng(0)
    for i in rng.choice(len(data.train), 25, replace=False):
        row = data.train.features.iloc[i]
        seen = history[(history[ent] == row[ent]) & (history[time] <= row[time])]
        expected = batch_features(
            seen.reset_index(drop=True), client.features, entity=ent, time=time, target=target
        ).iloc[-1]
        got = row[client.features.names].to_numpy(float)
        assert np.allclose(got, expected[client.features.names].to_numpy(float), atol=1e-9)
        # The label for step h is the observation h steps after the origin.
        later = history[(history[ent] == row[ent]) & (history[time] > row[time])][target]
        assert np.allclose(data.train.labels[i], later.to_numpy()[: data.train.labels.shape[1]])


def test_point_in_time_join_never_looks_ahead(weather_project) -> None:
    client = FeatureStoreClient(weather_project)
    series = weather_project.settings.series
    offline = client.read_offline()
    rows = offline.iloc[[500, 501, 9000]][[series.entity_col, series.time]].copy()
    between = rows.assign(**{series.time: rows[series.time] + pd.Timedelta(minutes=59)})
    got = client.historical(between)
    expected = offline.iloc[[500, 501, 9000]][client.features.names].to_numpy(float)
    assert np.allclose(got[client.features.names].to_numpy(float), expected)


def test_redis_online_store_serves_the_latest_features(weather_project, redis_server, tmp_path) -> None:
    raw = yaml.safe_load((weather_project.root / "tsops.yaml").read_text())
    raw["project"] = "weather_redis"
    raw["data"]["path"] = str(weather_project.data_path)
    raw["stores"] = {"online": {"type": "redis", "connection_string": f"127.0.0.1:{redis_server.port}"}}
    (tmp_path / "tsops.yaml").write_text(yaml.safe_dump(raw))
    project = Project.load(tmp_path, environ={})
    result = ingest(project, quiet=True)
    assert result.online_rows == 2
    assert redis_server.client().dbsize() > 0  # the rows really live in Redis

    client = FeatureStoreClient(project)
    online = client.online(["seattle", "san_francisco", "atlantis"])
    offline = client.read_offline()
    for i, city in enumerate(["seattle", "san_francisco"]):
        last = offline[offline["city"] == city].iloc[-1]
        assert np.allclose(
            online.iloc[i][client.features.names].to_numpy(float),
            last[client.features.names].to_numpy(float),
        )
    assert online.iloc[2][client.features.names].isna().all()
    assert "redis" in (project.feature_repo / "feature_store.yaml").read_text()
