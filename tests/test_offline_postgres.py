"""The PostgreSQL offline store (cluster mode): ingest writes it, the stream appends to it once
per observation, training reads point-in-time data from it through Feast's PostgreSQL store,
and its password is a secret that no file or message holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import (
    PG_PASSWORD_VAR,
    assert_features_equal_the_batch_engine,
    postgres_offline,
    run_cli,
    synthetic_events,
    write_jsonl,
)
from tsops.errors import ConfigError, StoreError
from tsops.features.store import FeatureStoreClient
from tsops.settings import Project


def test_ingest_writes_the_same_rows_to_postgres_as_to_parquet(
    weather_project, weather_project_postgres, postgres_server
) -> None:
    on_file = FeatureStoreClient(weather_project).read_offline()
    client = FeatureStoreClient(weather_project_postgres)
    on_pg = client.read_offline()
    assert client.offline.feast_config(resolved=False)["type"] == "postgres"
    assert not (weather_project_postgres.offline_path).exists()  # nothing went to a file
    pd.testing.assert_frame_equal(on_pg, on_file, check_dtype=False, rtol=0, atol=1e-12)
    with postgres_server.connect("weather_offline") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM tsops_features")
        assert cur.fetchone()[0] == len(on_file)


def test_training_data_from_postgres_equals_training_data_from_parquet(
    weather_project, weather_project_postgres
) -> None:
    from tsops.models import dataset

    horizon = weather_project.settings.model.horizon
    a = dataset.build(FeatureStoreClient(weather_project), horizon)
    b = dataset.build(FeatureStoreClient(weather_project_postgres), horizon)
    names = FeatureStoreClient(weather_project).features.names
    assert len(a.train) == len(b.train) and len(a.test) == len(b.test)
    assert np.allclose(a.train.features[names].to_numpy(float), b.train.features[names].to_numpy(float))
    assert np.allclose(a.train.labels, b.train.labels)


def test_an_appended_observation_lands_once(stream_project, postgres_server) -> None:
    project = stream_project(stores={"offline": postgres_offline(postgres_server, "append_once")})
    client = FeatureStoreClient(project)
    before = client.read_offline()
    series = project.settings.series
    last = before.groupby(series.entity_col).tail(1).copy()
    last[series.time] = last[series.time] + series.step
    client.append_offline(last)
    client.append_offline(last)  # a replay after a crash
    after = client.read_offline()
    assert len(after) == len(before) + len(last)
    assert client.compact_offline() == 0  # nothing waits for a merge: the table is the store


def test_the_stream_appends_its_observations_with_batch_features(
    stream_project, postgres_server, tmp_path
) -> None:
    project = stream_project(stores={"offline": postgres_offline(postgres_server, "stream_log")})
    client = FeatureStoreClient(project)
    history = client.read_offline()
    events = synthetic_events(project, 12)
    path = write_jsonl(tmp_path / "events.jsonl", events)
    done = run_cli("stream", "--project", str(project.root), "--source", f"file:{path}", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    after = client.read_offline()
    assert len(after) == len(history) + len(events)
    assert_features_equal_the_batch_engine(client, after)


def test_the_password_is_a_secret_from_the_environment(
    weather_project_postgres, postgres_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = (weather_project_postgres.feature_repo / "feature_store.yaml").read_text()
    assert postgres_server.password not in config and f"${{{PG_PASSWORD_VAR}}}" in config
    assert postgres_server.password not in (weather_project_postgres.root / "tsops.yaml").read_text()

    monkeypatch.delenv(PG_PASSWORD_VAR)
    with pytest.raises(ConfigError, match=PG_PASSWORD_VAR):
        FeatureStoreClient(Project.load(weather_project_postgres.root)).read_offline()

    secret_file = weather_project_postgres.root.parent / "pg-password"
    secret_file.write_text(postgres_server.password + "\n")
    monkeypatch.setenv(f"{PG_PASSWORD_VAR}_FILE", str(secret_file))  # a mounted Secret
    assert len(FeatureStoreClient(Project.load(weather_project_postgres.root)).read_offline()) > 0

    monkeypatch.setenv(PG_PASSWORD_VAR, "wrong-password")
    with pytest.raises(StoreError) as refused:
        FeatureStoreClient(Project.load(weather_project_postgres.root)).read_offline()
    assert "PostgreSQL offline store" in str(refused.value)
    assert "wrong-password" not in str(refused.value) and postgres_server.password not in str(refused.value)
