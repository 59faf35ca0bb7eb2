"""The cluster in miniature: PostgreSQL, Redis, a Kafka-protocol broker and `mlflow server`,
then every tsops role as its own process in its own empty folder holding only `tsops.yaml` and
its environment (what the Kubernetes manifests give a pod): ingest, train + promote, two
`tsops serve` replicas, two `tsops stream --source kafka` workers in one consumer group,
`tsops replay --to kafka`, `tsops retrain` and `tsops batch`, sharing nothing but addresses
and secrets."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from conftest import (
    TSOPS,
    assert_features_equal_the_batch_engine,
    free_port,
    synthetic_events,
    write_synthetic_project,
)
from servers import TopicReader, wait_for_http
from tsops.features.store import FeatureStoreClient
from tsops.settings import Project

pytestmark = pytest.mark.slow

OUTAGE_S = 10.0

PARTITIONS = 4
SECRET_ENV = "TSOPS_DB_PASSWORD"
LOCAL_STATE = ["mlflow.db", "mlartifacts", "online.db", "registry.db", "offline/features.parquet"]


class Roles:
    """Each role's own folder (only `tsops.yaml`, plus a job's own input) and environment."""

    def __init__(self, base: Path, config: dict, env: dict[str, str]):
        self.base = base
        self.config = config
        self.env = env
        self.procs: list[subprocess.Popen[str]] = []

    def folder(self, role: str, inputs: dict[str, Path] | None = None) -> Path:
        folder = self.base / role
        folder.mkdir(parents=True)
        (folder / "tsops.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        for name, path in (inputs or {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / name)
        return folder

    def run(
        self, folder: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*TSOPS, *args, "--project", str(folder)], cwd=folder, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"tsops {args[0]} in {folder.name}:\n{done.stderr[-4000:]}"
        return done

    def start(self, folder: Path, *args: str) -> subprocess.Popen[str]:
        log = (folder / "role.log").open("a")
        proc = subprocess.Popen(
            [*TSOPS, *args, "--project", str(folder)], cwd=folder, env=self.env,
            stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def _poison() -> list[str]:
    return [
        "this is not json",
        json.dumps({"entity_id": "e1"}),  # no time, no value
        json.dumps({"entity_id": "e1", "timestamp": "2030-01-01T00:00:00", "value": "warm"}),
    ]


def _write_events(path: Path, events: list[dict], poison: list[str] | None = None) -> Path:
    lines = [json.dumps(e) for e in events] + (poison or [])
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _wait_for_predictions(
    predictions: TopicReader, keys: set[str], workers, timeout: float = 240
) -> list[dict]:
    """Every prediction record on the topic once all `keys` (entity|time) have one."""
    deadline = time.time() + timeout
    records: list[dict] = []
    while True:
        records += [json.loads(v) for v in predictions.poll()[len(records) :]]
        seen = {r["key"].rsplit("|", 1)[0] for r in records}
        if keys <= seen:
            return records
        for worker in workers:
            assert worker.poll() is None, f"a worker exited with {worker.returncode}"
        assert time.time() < deadline, f"{len(keys - seen)} events without a prediction"


def _forecast(url: str, entity: str) -> dict:
    answer = httpx.get(f"{url}/forecast/{entity}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _wait_for_dashboard(url: str, predictions: int, dead: int, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while True:
        overview = httpx.get(f"{url}/ui/overview", timeout=30).json()
        done = (
            overview["stream"]["predictions_total"] >= predictions
            and overview["dead_letters"]["total"] >= dead
            and overview["accuracy"]["available"]
        )
        if done or time.time() > deadline:
            return overview
        time.sleep(1)


def _wait_for_forecasts(urls: list[str], entity: str, wanted: Callable[[dict], bool], what: str) -> None:
    """Poll every serve replica's forecast for `entity` until each satisfies `wanted`."""
    deadline = time.time() + 60
    while not all(wanted(_forecast(u, entity)) for u in urls):
        assert time.time() < deadline, f"a serve replica does not {what}"
        time.sleep(0.5)


def test_the_cluster_in_miniature(
    postgres_server, redis_server, kafka_broker, mlflow_server, tmp_path: Path, monkeypatch
) -> None:
    pg = postgres_server
    for database in ("mini_offline", "mini_registry", "mini_monitoring"):
        pg.create_database(database)

    def db(name: str) -> str:
        return f"postgresql://{pg.user}:${{{SECRET_ENV}}}@{pg.host}:{pg.port}/{name}"

    suffix = uuid.uuid4().hex[:6]
    events_topic, predictions_topic, dead_topic = (f"{t}-{suffix}" for t in ("events", "predictions", "dead"))
    kafka_broker.create_topic(events_topic, PARTITIONS)
    redis_server.client().flushall()

    # One configuration, as a ConfigMap: addresses and ${secret} names, no secret values.
    template = write_synthetic_project(tmp_path / "template")
    config = yaml.safe_load((template.root / "tsops.yaml").read_text())
    config["project"] = f"mini_{suffix}"
    config["model"]["name"] = f"mini_{suffix}"
    config["tracking"] = {"uri": mlflow_server.url}
    config["stores"] = {
        "online": {"type": "redis", "connection_string": f"{redis_server.host}:{redis_server.port}"},
        "offline": {"type": "postgres", "url": db("mini_offline")},
        "registry_url": db("mini_registry"),
    }
    config["stream"] = {
        "source": "kafka",
        "batch_size": 500,
        "reload_interval_s": 1,
        "sinks": [{"type": "kafka", "topic": predictions_topic}],
        "dead_letter": {"type": "kafka", "topic": dead_topic},
        "kafka": {
            "bootstrap_servers": kafka_broker.bootstrap,
            "events_topic": events_topic,
            "group_id": f"g-{suffix}",
        },
    }
    config["serving"] = {"reload_interval_s": 1, "admin_token": "${TSOPS_ADMIN_TOKEN}"}
    config["monitoring"] = {"database": db("mini_monitoring"), "snapshot_interval_s": 1}
    config["retrain"] = {"holdout": 48, "warm_window": 300, "warm_epochs": 2, "rollback": {"enabled": False}}
    # The statistical baselines are in-process fits that no service sees (and no promotion here
    # asks for them): without them the train and retrain jobs skip most of their work.
    config["backtest"]["baselines"] = []
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        SECRET_ENV: pg.password,
        "TSOPS_ADMIN_TOKEN": "admin-" + suffix,
    }
    roles = Roles(tmp_path / "roles", config, env)
    history = template.data_path
    history_rows = len(pd.read_parquet(history))
    monkeypatch.setenv(SECRET_ENV, pg.password)  # for this test's own reads of the stores
    project = Project.load(template.root, environ={})  # for the synthetic series' continuation
    predictions = kafka_broker.reader(predictions_topic)  # the workers' sink creates the topic
    try:
        # Jobs: ingest; train (a deliberately weak first model, by a per-role override) + promote.
        ingest = roles.folder("ingest", {str(history.relative_to(template.root)): history})
        roles.run(ingest, "ingest")
        trainer = roles.folder("train")
        roles.run(trainer, "train", "--quick", env={"TSOPS_MODEL__LEARNING_RATE": "1e-7"})
        roles.run(trainer, "promote")
        tracking = MlflowClient(mlflow_server.url)
        experiment = tracking.get_experiment_by_name(config["project"])
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's proxy

        # Services: two serve replicas, two stream workers in one consumer group.
        serve_urls = []
        for i in (1, 2):
            port = free_port()
            proc = roles.start(roles.folder(f"serve-{i}"), "serve", "--port", str(port))
            url = f"http://127.0.0.1:{port}"
            wait_for_http(f"serve-{i}", f"{url}/v2/health/ready", proc, lambda: "", timeout=180)
            serve_urls.append(url)
        worker_folders = [roles.folder(f"stream-{i}") for i in (1, 2)]
        workers = [roles.start(f, "stream", "--source", "kafka", "--json") for f in worker_folders]

        # Events through the broker, poison included: every valid event gets a prediction.
        replay = roles.folder("replay")
        first = synthetic_events(project, 16)
        roles.run(
            replay, "replay", str(_write_events(replay / "first.jsonl", first, _poison())), "--to", "kafka"
        )
        keys = {f"{e['entity_id']}|{e['timestamp']}" for e in first}
        _wait_for_predictions(predictions, keys, workers)
        dead = [json.loads(v) for v in kafka_broker.read_all(dead_topic, expected=len(_poison()), timeout=60)]
        assert len(dead) == len(_poison()) and all(d["error"] and d["detail"] for d in dead)

        # One worker dies: its partitions move to the other, nothing is lost; then it restarts.
        workers[0].kill()
        workers[0].wait()
        second = synthetic_events(project, 16, start=project.settings.data.synthetic.periods + 16)
        roles.run(replay, "replay", str(_write_events(replay / "second.jsonl", second)), "--to", "kafka")
        keys |= {f"{e['entity_id']}|{e['timestamp']}" for e in second}
        records = _wait_for_predictions(predictions, keys, workers[1:])
        by_key: dict[str, list] = {}
        for r in records:  # a repeat (after the rebalance) is identical, by its idempotency key
            assert np.allclose(by_key.setdefault(r["key"], r["values"]), r["values"], atol=1e-9)
        assert {r["model_version"] for r in records} == {1}
        workers[0] = roles.start(worker_folders[0], "stream", "--source", "kafka", "--json")

        # A 10 s outage of PostgreSQL, Redis and the tracking server in turn (SIGSTOP of the
        # service and every process it forked): the roles wait, recover and lose nothing.
        start = project.settings.data.synthetic.periods + 32
        for i, service in enumerate((pg, redis_server, mlflow_server)):
            batch = synthetic_events(project, 4, start=start + 4 * i)
            service.pause()
            try:
                path = _write_events(replay / f"outage-{i}.jsonl", batch)
                roles.run(replay, "replay", str(path), "--to", "kafka")
                time.sleep(OUTAGE_S)
            finally:
                service.resume()
            keys |= {f"{e['entity_id']}|{e['timestamp']}" for e in batch}
            second += batch
            _wait_for_predictions(predictions, keys, workers)

        # Both replicas answer with the same numbers, from the features the workers wrote (at
        # their checkpoint after the predictions: each replica is given until it sees them).
        entities = sorted({e["entity_id"] for e in first})
        origin = pd.Timestamp(second[-1]["timestamp"])
        for entity in entities:
            _wait_for_forecasts(
                serve_urls,
                entity,
                lambda f: pd.Timestamp(f["origin"]).tz_localize(None) == origin,
                f"forecast {entity} from {origin}",
            )
            a, b = (_forecast(u, entity) for u in serve_urls)
            assert a["version"] == b["version"] == 1
            assert a == b
            assert pd.Timestamp(a["origin"]).tz_localize(None) == origin

        # The dashboard of a replica reads what the stream wrote where it wrote it: forecasts and
        # dead letters from their topics, actuals from the PostgreSQL offline store, online
        # accuracy from the monitoring database (no file of any other role).
        overview = _wait_for_dashboard(serve_urls[1], predictions=len(keys), dead=len(_poison()))
        assert overview["entities"] == len(entities) and overview["stream"]["actuals_total"] > 0
        assert overview["accuracy"]["available"], overview["accuracy"]["reason"]

        # Retrain (job) sees what the workers appended; its promotion reaches every replica.
        retrainer = roles.folder("retrain")
        decided = json.loads(
            roles.run(retrainer, "retrain", "--mode", "warm", "--json").stdout.splitlines()[-1]
        )
        assert decided["outcome"] in ("promoted", "rejected"), decided
        run = tracking.get_run(decided["run_id"])
        window_end = pd.Timestamp(run.data.tags["tsops.backtest_window"].split("/")[-1])
        # its last backtest origin is the latest one with H labels, or less than a stride before it
        latest = pd.Timestamp(second[-1]["timestamp"]) - pd.Timedelta(hours=config["model"]["horizon"])
        assert latest - pd.Timedelta(hours=config["backtest"]["stride"]) < window_end <= latest
        if decided["outcome"] == "rejected":  # the gate kept v1: move the alias by hand instead
            roles.run(trainer, "promote", "--version", str(decided["version"]), "--force")
        new = int(decided["version"])
        _wait_for_forecasts(
            serve_urls, entities[0], lambda f: f["version"] == new, "pick up the new champion"
        )
        time.sleep(3)  # the workers check the champion every second
        third = synthetic_events(project, 8, start=start + 12)
        roles.run(replay, "replay", str(_write_events(replay / "third.jsonl", third)), "--to", "kafka")
        third_keys = {f"{e['entity_id']}|{e['timestamp']}" for e in third}
        records = _wait_for_predictions(predictions, keys | third_keys, workers)
        assert {r["model_version"] for r in records if r["key"].rsplit("|", 1)[0] in third_keys} == {new}
        summaries = []
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0
            summaries.append(json.loads(out.strip().splitlines()[-1]))
        assert all(s["reloads"] >= 1 for s in summaries), summaries  # both workers swapped models

        # An operator's view: `tsops status --json` from yet another folder sees the models and
        # the stores, and no secret; no MLflow parameter or tag holds one either.
        status = json.loads(roles.run(roles.folder("status"), "status", "--json").stdout)
        assert json.dumps(status).count(pg.password) == 0 and status["models"]
        for run_info in tracking.search_runs([experiment.experiment_id]):
            assert pg.password not in json.dumps({**run_info.data.params, **run_info.data.tags})

        # Batch (job): forecasts for every entity from the online store, into PostgreSQL.
        batcher = roles.folder("batch")
        job = {
            "model": {
                "uri": f"models:/{config['model']['name']}@champion",
                "tracking_uri": mlflow_server.url,
            },
            "project": ".",
            "data": {
                "source": {"type": "entities", "params": {"ids": entities}},
                "target": {"type": "sql", "params": {"url": db("mini_offline"), "table": "forecasts"}},
            },
        }
        (batcher / "job.yaml").write_text(yaml.safe_dump(job))
        done = subprocess.run(
            [*TSOPS, "batch", "--config", str(batcher / "job.yaml"), "--json"], cwd=batcher, env=env,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
        with pg.connect("mini_offline") as conn, conn.cursor() as cur:
            cur.execute('SELECT "entity_id", "yhat_1" FROM forecasts ORDER BY "entity_id"')
            batch_rows = cur.fetchall()
        assert [r[0] for r in batch_rows] == entities
        for entity, yhat_1 in batch_rows:
            assert np.isclose(yhat_1, _forecast(serve_urls[0], entity)["forecast"][0]["value"], atol=1e-6)
    finally:
        roles.stop_all()
        predictions.close()

    # The offline table holds every observation once (replays after the kill and the outages
    # included), with the batch engine's features.
    client = FeatureStoreClient(Project.load(roles.folder("check"), environ=env))
    after = client.read_offline()
    assert len(after) == history_rows + len(first) + len(second) + len(third)
    assert_features_equal_the_batch_engine(client, after)

    # No role kept or read the embedded stores: everything went through the services.
    for folder in (tmp_path / "roles").iterdir():
        if folder.name == "check":
            continue
        for name in LOCAL_STATE:
            assert not (folder / ".tsops" / name).exists(), f"{folder.name} wrote .tsops/{name}"
    logs = "".join(p.read_text() for p in (tmp_path / "roles").glob("*/role.log"))
    assert pg.password not in logs and "admin-" + suffix not in logs
