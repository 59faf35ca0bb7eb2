"""Shared fixtures: real servers on free loopback ports, one per test session.

A server that cannot start fails the tests that need it, with the reason;
it never skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from servers import (
    KafkaBroker,
    MlflowTrackingServer,
    PostgresServer,
    RedisServer,
    ServerStartError,
    free_port,
    wait_for_http,
)

__all__ = ["free_port"]


def _start_or_fail(fixture: str, start: Callable[[], object]) -> None:
    """Start a server; on failure fail (never skip) with the server's own reason."""
    reason = None
    try:
        start()
    except ServerStartError as exc:
        reason = str(exc)
    if reason is not None:
        pytest.fail(f"{fixture} fixture could not start its server:\n{reason}", pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A `redis-server` without persistence: `.host`, `.port`, `.url`, `.client()`."""
    server = RedisServer()
    _start_or_fail("redis_server", server.start)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster: `.host`, `.port`, `.user`, `.password`, `.url`,
    `.create_database(name) -> url`, `.url_for(name)`, `.connect(name)`."""
    server = PostgresServer()
    _start_or_fail("postgres_server", server.start)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A memory-only Kafka-protocol broker (tansu): `.bootstrap`, `.create_topic()`,
    `.read_all()`, `.pause()`/`.resume()` (SIGSTOP/SIGCONT)."""
    server = KafkaBroker()
    _start_or_fail("kafka_broker", server.start)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(postgres_server: PostgresServer) -> Iterator[MlflowTrackingServer]:
    """`mlflow server` on a PostgreSQL backend store, artefacts through its proxy: `.url`."""
    server = MlflowTrackingServer(postgres_server.create_database("mlflow_tracking"))
    _start_or_fail("mlflow_server", server.start)
    try:
        yield server
    finally:
        server.stop()


# --- tsops projects shared by the tests (built once per session) ---------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

TSOPS = [sys.executable, "-m", "tsops"]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real `tsops` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*TSOPS, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def weather_project(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The weather example, initialised and ingested (SQLite online store)."""
    from tsops.features.ingest import ingest
    from tsops.scaffold import init_example

    project = init_example(tmp_path_factory.mktemp("weather") / "proj", "weather")
    ingest(project, quiet=True)
    return project


PG_PASSWORD_VAR = "TSOPS_TEST_PG_PASSWORD"


def postgres_offline(server: PostgresServer, database: str) -> dict[str, str]:
    """`stores.offline` settings for a PostgreSQL offline store in a new database of `server`;
    the password is a `${...}` secret read from the environment, as in a cluster."""
    server.create_database(database)
    os.environ[PG_PASSWORD_VAR] = server.password  # inherited by the CLI subprocesses
    url = f"postgresql://{server.user}:${{{PG_PASSWORD_VAR}}}@{server.host}:{server.port}/{database}"
    return {"type": "postgres", "url": url}


@pytest.fixture(scope="session")
def weather_project_postgres(tmp_path_factory: pytest.TempPathFactory, postgres_server):  # type: ignore[no-untyped-def]
    """The weather example with its offline store in PostgreSQL, initialised and ingested."""
    import yaml

    from tsops.features.ingest import ingest
    from tsops.scaffold import init_example
    from tsops.settings import Project

    root = tmp_path_factory.mktemp("weather-pg") / "proj"
    init_example(root, "weather")
    raw = yaml.safe_load((root / "tsops.yaml").read_text())
    raw.setdefault("stores", {})["offline"] = postgres_offline(postgres_server, "weather_offline")
    (root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    project = Project.load(root)
    ingest(project, quiet=True)
    return project


@pytest.fixture(scope="session", params=["file", "postgres"])
def weather_on_each_offline_store(request):  # type: ignore[no-untyped-def]
    """The ingested weather example, once per offline store (Parquet, PostgreSQL)."""
    name = "weather_project" if request.param == "file" else "weather_project_postgres"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def trained_weather(weather_project):  # type: ignore[no-untyped-def]
    """The weather example after one quick training (version 1, challenger) and promotion."""
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train

    outcome = train(weather_project, quick=True, show_progress=False)
    promote(weather_project)
    return outcome


def write_synthetic_project(root: Path, *, tracking_uri: str | None = None, extra: dict | None = None):  # type: ignore[no-untyped-def]
    """A small synthetic project (5 entities, 1-epoch quick training) at `root`."""
    import yaml

    from tsops.scaffold import init_example
    from tsops.settings import Project

    init_example(root, "synthetic", entities=5)
    raw = yaml.safe_load((root / "tsops.yaml").read_text())
    raw["model"].update(quick_epochs=1)
    raw["backtest"]["holdout"] = 168
    # small: without the base-only lags init keeps for the synthetic series (a lookback of 360
    # steps that the retrain tests' 400-step windows cannot hold, and 71 more columns a row)
    raw["features"]["base_lags"] = []
    if tracking_uri:
        raw["tracking"] = {"uri": tracking_uri}
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    (root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return Project.load(root, environ={})


@pytest.fixture(scope="session")
def stream_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A champion for the small synthetic project; other projects share its tracking store."""
    from tsops.features.ingest import ingest
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train

    # 13 origins half a day apart span six horizons: enough to resample (the backtest's ranges)
    project = write_synthetic_project(
        tmp_path_factory.mktemp("stream-model") / "proj", extra={"backtest": {"stride": 12}}
    )
    ingest(project, quiet=True)
    train(project, quick=True, show_progress=False)
    promote(project)
    return project


@pytest.fixture()
def stream_project(stream_model, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh, ingested copy of the small synthetic project using `stream_model`'s champion."""
    from tsops.features.ingest import ingest

    def make(**extra: dict) -> object:
        project = write_synthetic_project(
            tmp_path / "proj", tracking_uri=stream_model.tracking_uri, extra=extra
        )
        ingest(project, quiet=True)
        return project

    return make


def synthetic_events(project, steps: int, start: int | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    """The continuation of a synthetic project's series: `steps` events per entity."""
    from tsops.data.synthetic import SyntheticSpec, generate_range

    syn = project.settings.data.synthetic
    spec = SyntheticSpec(entities=syn.entities, start=syn.start, periods=syn.periods, seed=syn.seed)
    first = syn.periods if start is None else start
    frame = generate_range(spec, first, first + steps).sort_values(["timestamp", "entity_id"])
    return [
        {"entity_id": e, "timestamp": t.isoformat(), "value": float(v)}
        for e, t, v in frame.itertuples(index=False)
    ]


def write_jsonl(path: Path, rows: list) -> Path:  # type: ignore[type-arg]
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def mlflow_serve(trained_weather, weather_project) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """`mlflow models serve` on the same registered champion, for side-by-side comparison."""
    port = free_port()
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [
            str(bindir / "mlflow"), "models", "serve", "-m",
            f"models:/{weather_project.settings.model.name}@champion",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
        ],
        env={"MLFLOW_TRACKING_URI": weather_project.tracking_uri, "PATH": f"{bindir}:/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _start_or_fail(
        "mlflow_server",
        lambda: wait_for_http("mlflow models serve", f"{url}/ping", proc, lambda: proc.communicate()[0]),
    )
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def assert_features_equal_the_batch_engine(client, rows) -> None:  # type: ignore[no-untyped-def]
    """Every row's features are what the batch engine computes from the rows' own history."""
    import numpy as np

    from tsops.features.engines import batch_features

    series = client.project.settings.series
    ent, time, target = series.entity_col, series.time, series.target
    expected = batch_features(
        rows[[ent, time, target]], client.features, entity=ent, time=time, target=target
    )
    names = client.features.names
    assert np.allclose(
        rows[names].to_numpy(float), expected[names].to_numpy(float), atol=1e-6, equal_nan=True
    )
