"""Cluster mode beside the embedded mode, on the same machine, in one run.

    .venv/bin/python benchmarks/cluster.py [--entities 50] [--sequential 2000] [--rate 2000]
        [--seconds 10] [--append-rows 2000] [--append-repeats 30]

Servers on loopback (as the tests start them): PostgreSQL, Redis, a Kafka-protocol broker
(tansu) and `mlflow server` on PostgreSQL with its artefact proxy. Two copies of the synthetic
project, each ingested, trained (quick) and promoted:

- **embedded**: MLflow on SQLite, the Parquet offline store, the SQLite online store;
- **cluster**: the tracking server, the PostgreSQL offline store and Feast registry, the Redis
  online store, the monitoring history in PostgreSQL.

Figures:

1. `GET /forecast/{entity}` sequentially (one client, one connection): p50/p99 per mode.
2. The stream end to end at `--rate` events/s through the broker (produced → prediction
   fsynced to the file sink), the worker's offline log in Parquet parts vs PostgreSQL.
3. The offline append alone: one checkpoint's rows (`--append-rows`) appended
   `--append-repeats` times: Parquet part file vs PostgreSQL `INSERT ... ON CONFLICT DO
   NOTHING` (through a temporary table), in µs per row.

The goal (issue: cluster mode within 1.5x of the embedded mode's latency) is printed as ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import http_caller, sequential, tsops_serve  # noqa: E402
from streaming import events, measure_latency  # noqa: E402

from servers import KafkaBroker, MlflowTrackingServer, PostgresServer, RedisServer  # noqa: E402
from tsops.features.store import FeatureStoreClient  # noqa: E402
from tsops.settings import Project  # noqa: E402

SECRET = "TSOPS_BENCH_DB_PASSWORD"


def prepare(folder: Path, entities: int, cluster: dict | None) -> Project:
    from tsops.features.ingest import ingest
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train
    from tsops.scaffold import init_example

    project = init_example(folder / "proj", "synthetic", entities=entities)
    raw = yaml.safe_load((project.root / "tsops.yaml").read_text())
    raw.setdefault("backtest", {})["baselines"] = []  # latency is measured here, not quality
    raw.update(cluster or {})
    (project.root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    project = Project.load(project.root)
    ingest(project, quiet=True)
    train(project, quick=True, show_progress=False)
    promote(project)
    return project


def forecast_latency(project: Project, n: int, log: Path, stack: ExitStack) -> dict[str, float]:
    url = tsops_serve(project, {}, log, stack)
    entities = FeatureStoreClient(project).read_offline()[project.settings.series.entity_col].unique()
    callers = [http_caller(url, "GET", f"/forecast/{e}") for e in entities]
    state = {"i": 0}

    def call() -> bytes:
        state["i"] += 1
        return callers[state["i"] % len(callers)]()

    return sequential(call, n)


def append_cost(project: Project, rows: int, repeats: int) -> float:
    """µs per row of one checkpoint's append (new rows each time, as a stream adds them)."""
    client = FeatureStoreClient(project)
    base = client.read_offline()
    series = project.settings.series
    last = base.sort_values(series.time).groupby(series.entity_col).tail(1)
    per_entity = max(1, rows // len(last))
    spent = []
    for r in range(repeats):
        parts = []
        for k in range(per_entity):
            frame = last.copy()
            frame[series.time] = frame[series.time] + series.step * (1 + r * per_entity + k)
            parts.append(frame)
        batch = pd.concat(parts, ignore_index=True)
        started = time.perf_counter()
        client.append_offline(batch)
        spent.append((time.perf_counter() - started) / len(batch) * 1e6)
    client.compact_offline()
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--append-rows", type=int, default=2000)
    parser.add_argument("--append-repeats", type=int, default=30)
    args = parser.parse_args()

    import os

    work = Path(tempfile.mkdtemp(prefix="tsops-bench-cluster-"))
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        pg = stack.enter_context(PostgresServer())
        redis = stack.enter_context(RedisServer())
        broker = KafkaBroker().start()
        stack.callback(broker.stop)
        for db in ("offline", "feast", "monitoring"):
            pg.create_database(db)
        mlflow = stack.enter_context(MlflowTrackingServer(pg.create_database("mlflow")))
        os.environ[SECRET] = pg.password

        def db(name: str) -> str:
            return f"postgresql://{pg.user}:${{{SECRET}}}@{pg.host}:{pg.port}/{name}"

        cluster = {
            "tracking": {"uri": mlflow.url},
            "stores": {
                "online": {"type": "redis", "connection_string": f"{redis.host}:{redis.port}"},
                "offline": {"type": "postgres", "url": db("offline")},
                "registry_url": db("feast"),
            },
            "monitoring": {"database": db("monitoring")},
        }
        print("preparing the embedded and the cluster project ...", flush=True)
        modes = {
            "embedded": prepare(work / "embedded", args.entities, None),
            "cluster": prepare(work / "cluster", args.entities, cluster),
        }
        steps = int(args.rate * args.seconds / args.entities * 1.1) + 1
        for mode, project in modes.items():
            print(f"{mode}: /forecast ...", flush=True)
            with ExitStack() as serving:
                forecast = forecast_latency(project, args.sequential, work / f"{mode}-serve.log", serving)
            print(f"{mode}: stream at {args.rate:.0f} ev/s ...", flush=True)
            evs = events(project, steps)
            stream = measure_latency(project, broker, "python", evs, args.rate, f"cluster-{mode}")
            print(f"{mode}: offline append ...", flush=True)
            append = append_cost(project, args.append_rows, args.append_repeats)
            results[mode] = {"forecast_ms": forecast, "stream": stream, "append_us_per_row": append}

    e, c = results["embedded"], results["cluster"]
    print()
    print(f"{'':34} {'embedded':>12} {'cluster':>12} {'ratio':>8}")
    for label, a, b in (
        ("/forecast p50 ms", e["forecast_ms"]["p50"], c["forecast_ms"]["p50"]),
        ("/forecast p99 ms", e["forecast_ms"]["p99"], c["forecast_ms"]["p99"]),
        ("stream end-to-end p50 ms", e["stream"]["latency_ms"]["p50"], c["stream"]["latency_ms"]["p50"]),
        ("stream end-to-end p99 ms", e["stream"]["latency_ms"]["p99"], c["stream"]["latency_ms"]["p99"]),
        ("stream in-worker p50 ms", e["stream"]["in_worker_ms"]["p50"], c["stream"]["in_worker_ms"]["p50"]),
        ("stream in-worker p99 ms", e["stream"]["in_worker_ms"]["p99"], c["stream"]["in_worker_ms"]["p99"]),
        ("offline append µs/row", e["append_us_per_row"], c["append_us_per_row"]),
    ):
        print(f"{label:34} {a:12.2f} {b:12.2f} {b / a:7.2f}x")
    print(f"\nmissing predictions: embedded {e['stream']['missing']}, cluster {c['stream']['missing']}")
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
