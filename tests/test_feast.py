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


def test_no_training_row_uses_an_observation_after_its_cutoff(weather_on_each_offline_store) -> None:
    weather_project = weather_on_each_offline_store
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


def test_point_in_time_join_never_looks_ahead(weather_on_each_offline_store) -> None:
    weather_project = weather_on_each_offline_store
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


def _redis_copy(weather_project, redis_server, folder) -> Project:
    raw = yaml.safe_load((weather_project.root / "tsops.yaml").read_text())
    raw["project"] = "weather_redis_write"
    raw["data"]["path"] = str(weather_project.data_path)
    raw["stores"] = {"online": {"type": "redis", "connection_string": f"127.0.0.1:{redis_server.port}"}}
    folder.mkdir()
    (folder / "tsops.yaml").write_text(yaml.safe_dump(raw))
    project = Project.load(folder, environ={})
    ingest(project, quiet=True)
    return project


def test_stream_writes_read_back_as_feasts_own_writes(weather_project, redis_server, tmp_path) -> None:
    """`write_online` builds the protos itself and calls Feast's provider: what Feast reads back
    equals what `FeatureStore.write_to_online_store` stores, NaN (a warming-up lag) included."""
    for project in (weather_project, _redis_copy(weather_project, redis_server, tmp_path / "redis")):
        client = FeatureStoreClient(project)
        offline = client.read_offline()
        rows = offline.groupby("city").tail(1).reset_index(drop=True)
        rows[client.features.names[3]] = np.nan
        rows.loc[rows["city"] == "seattle", client.features.names[0]] = 123.25
        rows["date"] = rows["date"] + pd.Timedelta(hours=1)
        feast_frame = rows.copy()
        feast_frame["date"] = pd.to_datetime(feast_frame["date"]).dt.tz_localize("UTC")
        client.store.write_to_online_store("series_features", feast_frame)
        theirs = client.online(["seattle", "san_francisco"])

        rows["date"] = rows["date"] + pd.Timedelta(hours=1)  # newer: Redis keeps the newest write
        rows[client.features.names[1]] = rows[client.features.names[1]] + 0.5
        client.write_online(rows)
        ours = client.online(["seattle", "san_francisco"])
        ours[client.features.names[1]] -= 0.5  # the write really landed, and nothing else moved

        names = client.features.names
        assert ours.iloc[0][names[0]] == 123.25
        assert ours[names[3]].isna().all()
        pd.testing.assert_frame_equal(ours, theirs)

        state = client.features.new_state()
        for t, v in zip(
            pd.date_range("2024-01-01", periods=5, freq="h"), [1.0, 2.5, 3.25, 4.0, 5.0], strict=True
        ):
            state.push(t, v)
        client.write_states({"seattle": state})
        back = client.read_states(["seattle", "atlantis"])
        assert list(back) == ["seattle"]
        assert back["seattle"].to_dict() == state.to_dict()
        ingest(project, quiet=True)  # other tests share the weather project's online store
