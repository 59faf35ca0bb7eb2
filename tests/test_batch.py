"""`tsops batch`: any MLflow model over chunked sources into atomic targets, on real servers
(PostgreSQL, a Kafka-protocol broker, local Spark)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from servers import free_port
from tsops.batch import load, run
from tsops.batch.config import validate
from tsops.errors import ConfigError, DataError

TESTS = Path(__file__).resolve().parent
FEATURES = [f"x{i}" for i in range(10)]


def write_job(folder: Path, source: dict, target: dict, name: str = "job.yaml", **extra: Any) -> Path:
    raw = {"data": {"source": source, "target": target}, **extra}
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def tsops_batch(job: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real command line, with the test plugins importable."""
    full = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "tsops", "batch", "--config", str(job)],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def frame(rows: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    df["id"] = np.arange(rows)
    return df


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A scikit-learn regressor logged to its own SQLite MLflow, aliased `champion`."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    folder = tmp_path_factory.mktemp("sk-mlflow")
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    train = frame(2000, seed=0)
    y = train[FEATURES].to_numpy() @ np.linspace(-2, 2, len(FEATURES)) + 3.0
    model = LinearRegression().fit(train[FEATURES], y)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    try:
        exp = MlflowClient(tracking).create_experiment("batch", artifact_location=(folder / "art").as_uri())
        with mlflow.start_run(experiment_id=exp):
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(train[FEATURES].head(), model.predict(train[FEATURES].head())),
                registered_model_name="batch_lin",
                pip_requirements=["scikit-learn"],  # inferring them loads the model in a subprocess
            )
        MlflowClient(tracking, tracking).set_registered_model_alias("batch_lin", "champion", "1")
        pyfunc = mlflow.pyfunc.load_model("models:/batch_lin@champion")
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    return {"uri": "models:/batch_lin@champion", "tracking_uri": tracking, "pyfunc": pyfunc}


def model_spec(sk: dict[str, Any]) -> dict[str, str]:
    return {"uri": sk["uri"], "tracking_uri": sk["tracking_uri"]}


def expected(sk: dict[str, Any], df: pd.DataFrame) -> np.ndarray:
    return np.asarray(sk["pyfunc"].predict(df[FEATURES]))


def test_parquet_scored_in_chunks_equals_model_predict_on_the_whole_frame(sklearn_model, tmp_path) -> None:
    df = frame(20_000)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    job = write_job(
        tmp_path,
        {"type": "parquet", "params": {"path": "in.parquet"}},
        {"type": "parquet", "params": {"path": "out/predictions.parquet"}},
        model=model_spec(sklearn_model),
        chunk_rows=3000,
    )
    summary = run(load(job), show_progress=False)
    out = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert summary.chunks == 7 and summary.rows_written == 20_000 and summary.rejected == 0
    assert list(out.columns) == [*FEATURES, "id", "prediction"]
    pd.testing.assert_frame_equal(out[[*FEATURES, "id"]], df)
    np.testing.assert_allclose(out["prediction"], expected(sklearn_model, df), rtol=1e-12, atol=1e-12)


def test_chunks_scored_in_threads_are_written_in_source_order(sklearn_model, tmp_path) -> None:
    df = frame(10_000, seed=4)
    df.loc[6543, "x0"] = np.nan
    df.to_parquet(tmp_path / "in.parquet", index=False)
    job = write_job(
        tmp_path,
        {"type": "parquet", "params": {"path": "in.parquet"}},
        {"type": "parquet", "params": {"path": "out.parquet"}},
        model=model_spec(sklearn_model),
        chunk_rows=500,
        threads=3,
        rejects={"policy": "skip", "path": "rejects.csv"},
    )
    summary = run(load(job), show_progress=False)
    out = pd.read_parquet(tmp_path / "out.parquet")
    good = df.drop(index=6543)
    assert summary.chunks == 20 and out["id"].tolist() == good["id"].tolist()
    np.testing.assert_allclose(out["prediction"], expected(sklearn_model, good), rtol=1e-12)
    assert pd.read_csv(tmp_path / "rejects.csv")[["id", "chunk", "row"]].values.tolist() == [[6543, 13, 6543]]


def test_partitioned_parquet_folder_and_csv_glob_are_read_whole(sklearn_model, tmp_path) -> None:
    df = frame(5000)
    for region, part in (("north", df.iloc[:2000]), ("south", df.iloc[2000:])):
        (tmp_path / "pq" / f"region={region}").mkdir(parents=True)
        part.to_parquet(tmp_path / "pq" / f"region={region}" / "part-0.parquet", index=False)
    (tmp_path / "csv").mkdir()
    for i in range(3):
        df.iloc[i::3].to_csv(tmp_path / "csv" / f"day-{i}.csv", index=False)
    spec = model_spec(sklearn_model)
    folder = write_job(
        tmp_path,
        {"type": "parquet", "params": {"path": "pq"}},
        {"type": "csv", "params": {"path": "from_folder.csv"}},
        name="folder.yaml",
        model=spec,
        chunk_rows=1500,
    )
    globbed = write_job(
        tmp_path,
        {"type": "csv", "params": {"path": "csv/day-*.csv"}},
        {"type": "parquet", "params": {"path": "from_glob.parquet"}},
        name="glob.yaml",
        model=spec,
        keep=["id"],
    )
    run(load(folder), show_progress=False)
    run(load(globbed), show_progress=False)
    from_folder = pd.read_csv(tmp_path / "from_folder.csv").sort_values("id").reset_index(drop=True)
    from_glob = pd.read_parquet(tmp_path / "from_glob.parquet").sort_values("id").reset_index(drop=True)
    assert sorted(set(from_folder["region"])) == ["north", "south"]  # hive partition column kept
    assert list(from_glob.columns) == ["id", "prediction"]
    np.testing.assert_allclose(from_folder["prediction"], expected(sklearn_model, df), rtol=1e-9)
    np.testing.assert_allclose(from_glob["prediction"], expected(sklearn_model, df), rtol=1e-9)


def test_skip_policy_writes_rejected_rows_with_their_reason(sklearn_model, tmp_path) -> None:
    df = frame(3000)
    text = df.astype({"x3": object})
    text.loc[10, "x3"] = "abc"  # a word in a numeric column: the signature refuses it
    text.loc[2500, "x5"] = None  # a missing value: the model refuses it
    text.to_csv(tmp_path / "in.csv", index=False)
    job = write_job(
        tmp_path,
        {"type": "csv", "params": {"path": "in.csv"}},
        {"type": "parquet", "params": {"path": "out.parquet"}},
        model=model_spec(sklearn_model),
        chunk_rows=1000,
        rejects={"policy": "skip", "path": "rejects.parquet"},
    )
    summary = run(load(job), show_progress=False)
    out = pd.read_parquet(tmp_path / "out.parquet")
    rejects = pd.read_parquet(tmp_path / "rejects.parquet")
    assert summary.rejected == 2 and summary.rows_written == 2998
    assert rejects[["id", "chunk", "row"]].values.tolist() == [[10, 0, 10], [2500, 2, 2500]]
    assert rejects["reject_reason"].tolist() == [
        "signature: column x3: 'abc' is not a double",
        "model: Input X contains NaN.",
    ]
    assert rejects.loc[0, "x3"] == "abc"  # the row as it was read
    good = df.drop(index=[10, 2500]).reset_index(drop=True)
    assert out["id"].tolist() == good["id"].tolist()
    np.testing.assert_allclose(out["prediction"], expected(sklearn_model, good), rtol=1e-12)


def test_fail_policy_exits_2_naming_chunk_and_row_and_keeps_the_previous_output(
    sklearn_model, tmp_path
) -> None:
    df = frame(9000)
    df.loc[7000, "x2"] = np.nan
    df.to_parquet(tmp_path / "in.parquet", index=False)
    (tmp_path / "out.parquet").write_bytes(b"previous run")
    job = write_job(
        tmp_path,
        {"type": "parquet", "params": {"path": "in.parquet"}},
        {"type": "parquet", "params": {"path": "out.parquet"}},
        model=model_spec(sklearn_model),
        chunk_rows=3000,
    )
    proc = tsops_batch(job)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "chunk 2, row 1000 (source row 7000)" in err and "Input X contains NaN" in err
    assert "Traceback" not in err
    assert (tmp_path / "out.parquet").read_bytes() == b"previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "job.yaml", "out.parquet"]


def test_bad_job_is_refused_naming_each_field(tmp_path) -> None:
    def problems(raw: dict) -> list[str]:
        with pytest.raises(ConfigError) as info:
            validate(raw, "job.yaml", tmp_path)
        return info.value.details

    src = {"type": "parquet", "params": {"path": "in.parquet"}}
    tgt = {"type": "parquet", "params": {"path": "out.parquet"}}
    model = {"uri": "models:/m@champion"}
    assert problems({"model": model, "data": {"source": {"type": "excel"}, "target": tgt}}) == [
        "data.source.type: unknown source 'excel'; known: csv, entities, feast, parquet, sql "
        "or pkg.module:Class"
    ]
    assert problems({"model": model, "data": {"source": src, "target": {"type": "parquet"}}}) == [
        "data.target.params.path: Field required"
    ]
    bad_params = {"type": "sql", "params": {"url": "sqlite://", "table": "bad name", "mode": "merge"}}
    assert problems({"model": model, "data": {"source": src, "target": bad_params}}) == [
        "data.target.params.table: String should match pattern '^[A-Za-z_][A-Za-z0-9_]*$'",
        "data.target.params.mode: Input should be 'replace' or 'partition'",
    ]
    assert problems(
        {"model": model, "data": {"source": src, "target": tgt}, "rejects": {"policy": "skip"}, "chunk": 5}
    ) == [
        "rejects: Value error, policy skip needs a rejects path (rejected rows are never dropped)",
        "chunk: unknown field (typo?)",
    ]
    assert problems(
        {"model": model, "data": {"source": src, "target": {"type": "batch_plugins:NotATarget"}}}
    ) == ["data.target.type: batch_plugins:NotATarget is not a target (it lacks write, commit, abort)"]
    assert problems({"model": model, "data": {"source": {"type": "nowhere.mod:Source"}, "target": tgt}}) == [
        "data.source.type: cannot import 'nowhere.mod': No module named 'nowhere'"
    ]
    job = write_job(tmp_path, {"type": "parquet", "params": {"path": "in.parquet", "colums": ["a"]}}, tgt)
    proc = tsops_batch(job)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "model: Field required" in err and "data.source.params.colums: unknown parameter (typo?)" in err
    assert "Traceback" not in err


def test_missing_source_unreachable_database_and_wrong_password_exit_2(postgres_server, tmp_path) -> None:
    tgt = {"type": "parquet", "params": {"path": "out.parquet"}}
    model = {"uri": "models:/m@champion"}
    dead = f"postgresql+psycopg2://tsops:x@127.0.0.1:{free_port()}/postgres"
    wrong = postgres_server.url.replace(f":{postgres_server.password}@", ":wrong@")
    cases = {
        "missing.yaml": (
            {"type": "parquet", "params": {"path": "no/such.parquet"}},
            "no such file or folder",
        ),
        "dead.yaml": ({"type": "sql", "params": {"url": dead, "query": "SELECT 1"}}, "cannot connect"),
        "wrong.yaml": (
            {"type": "sql", "params": {"url": wrong, "query": "SELECT 1"}},
            "password authentication failed",
        ),
    }
    procs = {n: tsops_batch(write_job(tmp_path, s, tgt, name=n, model=model)) for n, (s, _) in cases.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, err)
        assert cases[name][1] in err and "Traceback" not in err, err
        assert ":wrong@" not in err  # the URL is shown without its password


def test_user_plugins_are_loaded_by_import_path(sklearn_model, tmp_path) -> None:
    job = write_job(
        tmp_path,
        {"type": "batch_plugins:RangeSource", "params": {"rows": 2500, "batch": 700, "seed": 3}},
        {"type": "batch_plugins:JsonLinesTarget", "params": {"path": "out.jsonl"}},
        model=model_spec(sklearn_model),
        chunk_rows=1000,
    )
    summary = run(load(job), show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        np.concatenate([rng.normal(size=(n, 10)) for n in (700, 700, 700, 400)]), columns=FEATURES
    )
    assert summary.chunks == 3 and [r["id"] for r in lines] == list(range(2500))
    np.testing.assert_allclose([r["prediction"] for r in lines], expected(sklearn_model, df), rtol=1e-12)
    with pytest.raises(ConfigError) as info:
        validate(
            {
                "model": model_spec(sklearn_model),
                "data": {
                    "source": {"type": "batch_plugins:RangeSource", "params": {"rows": 0, "colour": 1}},
                    "target": {"type": "batch_plugins:JsonLinesTarget", "params": {"path": "x"}},
                },
            },
            "job.yaml",
            tmp_path,
        )
    assert info.value.details == [
        "data.source.params.rows: Input should be greater than or equal to 1",
        "data.source.params.colour: unknown parameter (typo?)",
    ]


def test_interrupted_run_leaves_no_partial_file(sklearn_model, tmp_path) -> None:
    (tmp_path / "out.parquet").write_bytes(b"previous run")
    job = write_job(
        tmp_path,
        {"type": "batch_plugins:RangeSource", "params": {"rows": 100_000, "batch": 500, "sleep_s": 0.05}},
        {"type": "parquet", "params": {"path": "out.parquet"}},
        model=model_spec(sklearn_model),
        chunk_rows=500,
    )
    proc = tsops_batch(job)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.parquet.tmp-*")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(0.5)  # a few chunks into the temporary file
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "nothing was written" in err and "Traceback" not in err
    assert (tmp_path / "out.parquet").read_bytes() == b"previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "out.parquet"]


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_inputs(postgres_server) -> dict[str, Any]:
    import sqlalchemy as sa

    url = postgres_server.create_database("batch")
    df = frame(4000, seed=5)
    engine = sa.create_engine(url)
    df.to_sql("inputs", engine, index=False, if_exists="replace")
    bad = df.head(50).copy()
    bad.loc[20, "x7"] = np.nan
    bad.to_sql("bad_inputs", engine, index=False, if_exists="replace")
    engine.dispose()
    return {"url": url, "df": df}


def _read_table(url: str, table: str) -> pd.DataFrame:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        return pd.read_sql(f"SELECT * FROM {table} ORDER BY id", engine)
    finally:
        engine.dispose()


def test_postgres_source_and_target_a_rerun_replaces_not_duplicates(
    sklearn_model, pg_inputs, tmp_path
) -> None:
    url = pg_inputs["url"]
    source = {
        "type": "sql",
        "params": {"url": url, "query": "SELECT * FROM inputs WHERE id < :n", "bind": {"n": 3000}},
    }
    job = write_job(
        tmp_path,
        source,
        {"type": "sql", "params": {"url": url, "table": "predictions"}},
        model=model_spec(sklearn_model),
        chunk_rows=700,
    )
    run(load(job), show_progress=False)
    run(load(job), show_progress=False)
    table = _read_table(url, "predictions")
    df = pg_inputs["df"].head(3000)
    assert table["id"].tolist() == list(range(3000))
    np.testing.assert_allclose(table["prediction"], expected(sklearn_model, df), rtol=1e-12)
    failing = write_job(
        tmp_path,
        {"type": "sql", "params": {"url": url, "query": "SELECT * FROM bad_inputs"}},
        {"type": "sql", "params": {"url": url, "table": "predictions"}},
        name="failing.yaml",
        model=model_spec(sklearn_model),
        chunk_rows=10,  # two chunks are in the transaction when the third fails
    )
    with pytest.raises(DataError, match=r"chunk 2, row 0 \(source row 20\)"):
        run(load(failing), show_progress=False)
    pd.testing.assert_frame_equal(_read_table(url, "predictions"), table)  # rolled back


def test_postgres_partition_mode_replaces_only_its_partition(sklearn_model, pg_inputs, tmp_path) -> None:
    url = pg_inputs["url"]
    jobs = {}
    for day, n in (("2024-01-01", 100), ("2024-01-02", 200)):
        jobs[day] = write_job(
            tmp_path,
            {"type": "sql", "params": {"url": url, "query": f"SELECT * FROM inputs WHERE id < {n}"}},
            {
                "type": "sql",
                "params": {"url": url, "table": "daily", "mode": "partition", "partition": {"day": day}},
            },
            name=f"{day}.yaml",
            model=model_spec(sklearn_model),
            keep=["id"],
        )
    for day in ("2024-01-01", "2024-01-02", "2024-01-01"):
        run(load(jobs[day]), show_progress=False)
    table = _read_table(url, "daily")
    assert table.groupby("day").size().to_dict() == {"2024-01-01": 100, "2024-01-02": 200}


# --- Kafka ---------------------------------------------------------------------------------


def kafka_job(tmp_path: Path, broker: Any, sk: dict[str, Any], df: pd.DataFrame, **extra: Any) -> tuple:
    df.to_parquet(tmp_path / "in.parquet", index=False)
    topic = f"batch-{uuid.uuid4().hex[:8]}"
    job = write_job(
        tmp_path,
        {"type": "parquet", "params": {"path": "in.parquet"}},
        {"type": "kafka", "params": {"topic": topic, "key": ["id"], "bootstrap_servers": broker.bootstrap}},
        model=model_spec(sk),
        chunk_rows=100,
        **extra,
    )
    return job, topic


def keyed_records(broker: Any, topic: str, expected: int) -> list[tuple[str, dict]]:
    """(key, value) of every record, read from each partition's start (no consumer group)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": uuid.uuid4().hex})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[tuple[str, dict]] = []
    deadline = time.time() + 30
    while len(out) < expected and time.time() < deadline:
        for m in consumer.consume(500, 0.5):
            if m.error() is None:
                out.append((m.key().decode(), json.loads(m.value())))
    consumer.close()
    return out


def test_kafka_target_publishes_keyed_records_and_a_rerun_resends_the_same_keys(
    sklearn_model, kafka_broker, tmp_path
) -> None:
    df = frame(300, seed=7)
    job, topic = kafka_job(tmp_path, kafka_broker, sklearn_model, df, keep=["id"])
    run(load(job), show_progress=False)
    run(load(job), show_progress=False)
    records = keyed_records(kafka_broker, topic, expected=600)
    assert len(records) == 600 and all(key == str(value["id"]) for key, value in records)
    latest = {value["id"]: value["prediction"] for _, value in records}  # what a compacted topic keeps
    assert sorted(latest) == list(range(300))
    np.testing.assert_allclose([latest[i] for i in range(300)], expected(sklearn_model, df), rtol=1e-12)


def test_failed_run_publishes_nothing_to_kafka(sklearn_model, kafka_broker, tmp_path) -> None:
    df = frame(300, seed=7)
    df.loc[250, "x1"] = np.nan
    job, topic = kafka_job(tmp_path, kafka_broker, sklearn_model, df)
    kafka_broker.create_topic(topic)
    with pytest.raises(DataError, match=r"chunk 2, row 50 \(source row 250\)"):
        run(load(job), show_progress=False)
    assert kafka_broker.read_all(topic, expected=1, timeout=4) == []


# --- our forecaster ------------------------------------------------------------------------


def _feature_rows(project: Any, rows: int) -> pd.DataFrame:
    from tsops.features.store import FeatureStoreClient

    client = FeatureStoreClient(project)
    offline = client.read_offline().dropna(subset=client.features.names)
    return offline.tail(rows).reset_index(drop=True)


def test_lstm_champion_scores_feature_rows_like_its_pyfunc(
    trained_weather, weather_project, tmp_path
) -> None:
    from tsops import registry

    features = _feature_rows(weather_project, 400)
    features.to_parquet(tmp_path / "features.parquet", index=False)
    job = write_job(
        tmp_path,
        {"type": "parquet", "params": {"path": "features.parquet"}},
        {"type": "parquet", "params": {"path": "forecasts.parquet"}},
        model={"uri": f"models:/{weather_project.settings.model.name}@champion"},
        project=str(weather_project.root),
        chunk_rows=150,
        keep=["city", "date"],
    )
    run(load(job), show_progress=False)
    out = pd.read_parquet(tmp_path / "forecasts.parquet")
    want = registry.load(weather_project).predict(features)
    horizon = weather_project.settings.model.horizon
    bounds = [
        f"yhat_{side}_{level}_{h}"
        for level in ("80", "95")
        for side in ("lower", "upper")
        for h in range(1, horizon + 1)
    ]
    assert list(out.columns) == ["city", "date", *want.columns, *bounds]
    np.testing.assert_allclose(out[want.columns].to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-6)


def test_lstm_batch_output_carries_the_models_interval_bounds(
    trained_weather, weather_project, tmp_path
) -> None:
    """The bounds per level and step are the ones /forecast and the stream give for those rows."""
    from tsops import registry

    features = _feature_rows(weather_project, 200)
    features.to_parquet(tmp_path / "features.parquet", index=False)
    job = write_job(
        tmp_path,
        {"type": "parquet", "params": {"path": "features.parquet"}},
        {"type": "csv", "params": {"path": "forecasts.csv"}},
        model={"uri": "models:/weather@champion"},
        project=str(weather_project.root),
        chunk_rows=64,
        keep="none",
    )
    run(load(job), show_progress=False)
    out = pd.read_csv(tmp_path / "forecasts.csv")
    _, forecaster = registry.load_forecaster(weather_project)
    yhat, bounds = forecaster.predict_intervals(features)
    assert sorted(bounds) == ["80", "95"]
    horizon = yhat.shape[1]
    for level, (lower, upper) in bounds.items():
        got_lower = out[[f"yhat_lower_{level}_{h}" for h in range(1, horizon + 1)]].to_numpy()
        got_upper = out[[f"yhat_upper_{level}_{h}" for h in range(1, horizon + 1)]].to_numpy()
        np.testing.assert_allclose(got_lower, lower, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got_upper, upper, rtol=1e-6, atol=1e-6)
    lower80, upper80 = bounds["80"]
    lower95, upper95 = bounds["95"]
    assert (lower80 < yhat).all() and (yhat < upper80).all()
    assert (lower95 < lower80).all() and (upper80 < upper95).all()


def test_entity_ids_get_forecasts_from_the_online_store(trained_weather, weather_project, tmp_path) -> None:
    from tsops import registry
    from tsops.features.online import OnlineFeatures

    cities = sorted(_feature_rows(weather_project, 2000)["city"].unique())
    job = write_job(
        tmp_path,
        {"type": "entities", "params": {"ids": [*cities, "atlantis"]}},
        {"type": "csv", "params": {"path": "forecasts.csv"}},
        model={"uri": "models:/weather@champion"},
        project=str(weather_project.root),
        keep=["city", "date"],
        rejects={"policy": "skip", "path": "rejects.csv"},
    )
    summary = run(load(job), show_progress=False)
    out = pd.read_csv(tmp_path / "forecasts.csv")
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    online = OnlineFeatures(weather_project)
    rows = online.read(cities, online.names)
    want = registry.load(weather_project).predict(pd.DataFrame(rows.matrix, columns=online.names))
    assert summary.rows_written == len(cities) and out["city"].tolist() == cities
    assert pd.to_datetime(out["date"]).tolist() == [
        pd.Timestamp(o.replace(tzinfo=None)) for o in rows.origins
    ]
    np.testing.assert_allclose(out[want.columns].to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-6)
    assert rejects[["city", "reject_reason"]].values.tolist() == [
        ["atlantis", "no complete feature row in the online store"]
    ]


def test_feast_source_backfills_with_point_in_time_features(
    trained_weather, weather_project, tmp_path
) -> None:
    from tsops import registry
    from tsops.features.store import FeatureStoreClient

    rows = _feature_rows(weather_project, 3000).iloc[::500][["city", "date"]].reset_index(drop=True)
    job = write_job(
        tmp_path,
        {"type": "feast", "params": {"rows": [{"city": c, "date": str(d)} for c, d in rows.values]}},
        {"type": "parquet", "params": {"path": "backfill.parquet"}},
        model={"uri": "models:/weather@champion"},
        project=str(weather_project.root),
    )
    run(load(job), show_progress=False)
    out = pd.read_parquet(tmp_path / "backfill.parquet")
    historical = FeatureStoreClient(weather_project).historical(rows)
    want = registry.load(weather_project).predict(historical)
    assert out["city"].tolist() == rows["city"].tolist()
    np.testing.assert_allclose(out[historical.columns[2:]].to_numpy(), historical.iloc[:, 2:].to_numpy())
    np.testing.assert_allclose(out[want.columns].to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-6)


# --- Spark ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark():  # type: ignore[no-untyped-def]
    from tsops.batch.config import SparkSpec
    from tsops.batch.spark import session

    spark = session(SparkSpec(), 1000)
    yield spark
    spark.stop()


def test_spark_engine_result_equals_local_engine_result(spark, sklearn_model, tmp_path) -> None:
    df = frame(6000, seed=9)
    df.loc[[15, 4321], "x4"] = np.nan
    df.to_parquet(tmp_path / "in.parquet", index=False, row_group_size=2000)
    results = {}
    for engine in ("local", "spark"):
        job = write_job(
            tmp_path,
            {"type": "parquet", "params": {"path": "in.parquet"}},
            {"type": "parquet", "params": {"path": f"out-{engine}.parquet"}},
            name=f"{engine}.yaml",
            model=model_spec(sklearn_model),
            engine=engine,
            chunk_rows=1000,
            rejects={"policy": "skip", "path": f"rejects-{engine}.parquet"},
        )
        summary = run(load(job), show_progress=False)
        out = pd.read_parquet(tmp_path / f"out-{engine}.parquet").sort_values("id").reset_index(drop=True)
        rejects = pd.read_parquet(tmp_path / f"rejects-{engine}.parquet").sort_values("id")
        results[engine] = (summary, out, rejects)
    local, spark_run = results["local"], results["spark"]
    assert spark_run[0].engine == "spark" and spark_run[0].rows_written == local[0].rows_written == 5998
    assert (tmp_path / "out-spark.parquet").is_dir()  # Spark's folder of part files, renamed into place
    pd.testing.assert_frame_equal(spark_run[1], local[1])
    assert spark_run[2]["id"].tolist() == local[2]["id"].tolist() == [15, 4321]
    assert spark_run[2]["reject_reason"].tolist() == local[2]["reject_reason"].tolist()
    assert not list(tmp_path.glob(".out-spark.parquet.*"))


def test_spark_engine_feeds_sql_and_kafka_targets_from_its_staging_folder(
    spark, sklearn_model, pg_inputs, kafka_broker, tmp_path
) -> None:
    url = pg_inputs["url"]
    df = pg_inputs["df"].head(2500)
    df.to_parquet(tmp_path / "in.parquet", index=False, row_group_size=1000)
    source = {"type": "parquet", "params": {"path": "in.parquet"}}
    sql_job = write_job(
        tmp_path,
        source,
        {"type": "sql", "params": {"url": url, "table": "spark_predictions"}},
        name="sql.yaml",
        model=model_spec(sklearn_model),
        engine="spark",
        chunk_rows=500,
    )
    for _ in range(2):  # a rerun replaces the table's rows, inside one transaction
        assert run(load(sql_job), show_progress=False).rows_written == 2500
    table = _read_table(url, "spark_predictions").sort_values("id").reset_index(drop=True)
    assert table["id"].tolist() == list(range(2500))
    np.testing.assert_allclose(table["prediction"], expected(sklearn_model, df), rtol=1e-12)

    topic = f"batch-{uuid.uuid4().hex[:8]}"
    kafka_job = write_job(
        tmp_path,
        source,
        {
            "type": "kafka",
            "params": {"topic": topic, "key": ["id"], "bootstrap_servers": kafka_broker.bootstrap},
        },
        name="kafka.yaml",
        model=model_spec(sklearn_model),
        engine="spark",
        chunk_rows=500,
        keep=["id"],
    )
    run(load(kafka_job), show_progress=False)
    records = keyed_records(kafka_broker, topic, expected=2500)
    assert len(records) == 2500 and all(key == str(value["id"]) for key, value in records)
    got = {value["id"]: value["prediction"] for _, value in records}
    np.testing.assert_allclose([got[i] for i in range(2500)], expected(sklearn_model, df), rtol=1e-12)
