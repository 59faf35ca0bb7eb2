"""Streaming benchmark: tsops' python engine side by side with a Spark Structured Streaming
micro-batch job and with per-event Feast writes, on the same events, in one run.

    .venv/bin/python benchmarks/streaming.py [--project DIR] [--rate 2000] [--seconds 20]
        [--throughput-events 50000] [--model-threads 1,2] [--skip-spark]

On a throw-away Kafka-protocol broker (tansu) and the project's SQLite online store:

1. **Latency at a fixed rate.** A producer publishes the continuation of the synthetic series
   at `--rate` events/s for `--seconds`; the engine under test (a `tsops stream --source kafka`
   process with a Kafka prediction sink) turns them into predictions; a consumer reads the
   prediction topic. Latency = prediction record received − event produced (same clock, one
   machine). Engines: tsops python engine; tsops on Spark (`--engine spark`, the same pipeline
   as a Spark micro-batch job, trigger `stream.spark.trigger_interval`).
2. **Throughput of one worker.** `--throughput-events` events are published first; then one
   python-engine worker consumes them as fast as it can (file source and Kafka source), with
   each `--model-threads` value; and the champion's forward pass alone on one full poll.
3. **Per-event Feast writes.** What a hand-written consumer does today: for each event, the
   features (tsops' incremental engine, to be generous), `FeatureStore.write_to_online_store`
   with the one row (what `FeatureStore.push(..., to=ONLINE)` calls), and one model call.

Before each run the project is re-ingested, so every engine starts from the same state.
Without `--project` a synthetic example (50 entities) is created, ingested, trained (quick)
and promoted in a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import KafkaBroker  # noqa: E402
from tsops.settings import Project  # noqa: E402

BIN = Path(sys.executable).parent


def prepare_project(folder: Path, entities: int) -> Project:
    from tsops.features.ingest import ingest
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train
    from tsops.scaffold import init_example

    project = init_example(folder / "proj", "synthetic", entities=entities)
    ingest(project, quiet=True)
    train(project, quick=True, show_progress=False)
    promote(project)
    return project


def reset(project: Project) -> None:
    """Back to the state right after `tsops ingest`: no stream output, no checkpoints."""
    from tsops.features.ingest import ingest

    state = project.state_dir
    for name in ("checkpoints", "spark-checkpoints", "offline/stream"):
        shutil.rmtree(state / name, ignore_errors=True)
    for name in ("predictions.jsonl", "dead_letters.jsonl"):
        (state / name).unlink(missing_ok=True)
    ingest(project, quiet=True, replace=True)  # the history file alone: the streamed rows go


def events(project: Project, steps: int) -> list[dict[str, Any]]:
    """The continuation of the synthetic series: `steps` events per entity, in time order."""
    from tsops.data.synthetic import SyntheticSpec, generate_range

    syn = project.settings.data.synthetic
    assert syn is not None, "the streaming benchmark needs a synthetic project"
    spec = SyntheticSpec(entities=syn.entities, start=syn.start, periods=syn.periods, seed=syn.seed)
    frame = generate_range(spec, syn.periods, syn.periods + steps).sort_values(["timestamp", "entity_id"])
    return [
        {"entity_id": e, "timestamp": t.isoformat(), "value": float(v)}
        for e, t, v in frame.itertuples(index=False)
    ]


def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {
        "n": len(a),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


# -- 1. latency at a fixed rate ---------------------------------------------------------------


class _FileTail:
    """Reads the lines appended to a JSONL prediction file (the `file` sink fsyncs each batch)."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: Any = None
        self._rest = b""

    def poll(self) -> list[bytes]:
        if self._handle is None:
            if not self.path.exists():
                time.sleep(0.001)
                return []
            self._handle = self.path.open("rb")
        chunk = self._handle.read()
        if not chunk:
            time.sleep(0.001)
            return []
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        return lines

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class _TopicTail:
    def __init__(self, broker: KafkaBroker, topic: str, group: str):
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,  # as the worker's: tansu does not wake a waiting fetch
                "session.timeout.ms": 2000,
                "heartbeat.interval.ms": 400,
            }
        )
        self.consumer.subscribe([topic])

    def poll(self) -> list[bytes]:
        return [m.value() for m in _poll(self.consumer) if m.error() is None and m.value()]

    def close(self) -> None:
        self.consumer.close()


def measure_latency(
    project: Project,
    broker: KafkaBroker,
    engine: str,
    evs: list[dict[str, Any]],
    rate: float,
    tag: str,
    out: str = "file",
    source: str = "kafka",
) -> dict[str, Any]:
    """`out`: where a prediction counts as available: `file` (fsynced to the JSONL sink) or
    `kafka` (read back from the prediction topic: a second broker hop). `source`: `kafka`, or
    `file` (events appended to a JSONL file the worker follows: no broker at all)."""
    from confluent_kafka import Producer

    events_topic, out_topic = f"bench.{tag}.events", f"bench.{tag}.predictions"
    out_file = project.state_dir / f"bench-{tag}-predictions.jsonl"
    out_file.unlink(missing_ok=True)
    broker.create_topic(events_topic, 4)
    sink = {"type": "file", "path": str(out_file)}
    if out == "kafka":
        broker.create_topic(out_topic, 1)
        sink = {"type": "kafka", "topic": out_topic}
    env = {
        **os.environ,
        "TSOPS_STREAM__KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "TSOPS_STREAM__KAFKA__EVENTS_TOPIC": events_topic,
        "TSOPS_STREAM__KAFKA__GROUP_ID": f"bench-{tag}",
        "TSOPS_STREAM__SINKS": json.dumps([sink]),
    }
    log = project.state_dir / f"bench-{tag}.log"
    in_file = project.state_dir / f"bench-{tag}-events.jsonl"
    in_file.write_text("")
    origin = "kafka" if source == "kafka" else f"file:{in_file}"
    cmd = [str(BIN / "tsops"), "stream", "-p", str(project.root), "--source", origin, "--engine", engine]
    if source == "file":
        cmd.append("--follow")
    worker = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    tail: _FileTail | _TopicTail = (
        _TopicTail(broker, out_topic, f"bench-reader-{tag}") if out == "kafka" else _FileTail(out_file)
    )
    broker_cpu = psutil.Process(broker.pid).cpu_times() if broker.pid else None
    produced: dict[str, float] = {}
    received: dict[str, float] = {}
    in_worker: dict[str, float] = {}  # the record's latency_ms: poll → prediction, in the worker
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            lines = tail.poll()
            now = time.time()  # when they were available (parsing them is the benchmark's cost)
            for line in lines:
                if line:
                    rec = json.loads(line)
                    key = f"{rec['entity']}|{rec['event_time']}"
                    received.setdefault(key, now)
                    if "latency_ms" in rec:
                        in_worker.setdefault(key, float(rec["latency_ms"]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # The producer keeps librdkafka's default linger (5 ms), as a user's would: about ten events
    # per produce request at 2k ev/s. At 1 ms the broker (tansu) spent 0.72 of a core instead
    # of 0.38 on the same events (one hop: p99 26 → 15 ms), starving the engines on 2 cores.
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    appender = in_file.open("a")

    def publish(e: dict[str, Any]) -> None:
        if source == "kafka":
            producer.produce(events_topic, json.dumps(e).encode(), e["entity_id"].encode())
            producer.poll(0)
        else:
            appender.write(json.dumps(e) + "\n")
            appender.flush()

    # Warm-up: the first events wait for the worker to start and join the group; they are
    # published before the clock starts and not counted.
    warm, timed = evs[: len(evs) // 10], evs[len(evs) // 10 :]
    for e in warm:
        publish(e)
    producer.flush()
    deadline = time.time() + 240
    while len(received) < len(warm) * 0.9 and time.time() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"{engine} worker exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    started = time.time()
    for i, e in enumerate(timed):
        due = started + i / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        key = f"{e['entity_id']}|{pd.Timestamp(e['timestamp']).isoformat()}"
        produced[key] = time.time()
        publish(e)
    producer.flush()
    appender.close()
    sent_seconds = time.time() - started
    deadline = time.time() + 120
    while sum(k in received for k in produced) < len(produced) and time.time() < deadline:
        time.sleep(0.2)
    done.set()
    reader.join()
    broker_share = None
    if broker_cpu is not None:
        spent = psutil.Process(broker.pid).cpu_times()
        broker_share = (spent.user + spent.system - broker_cpu.user - broker_cpu.system) / (
            time.time() - started
        )
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        worker.kill()
    tail.close()
    latencies = [(received[k] - t) * 1000 for k, t in produced.items() if k in received]
    return {
        "engine": engine if source == "kafka" else f"{engine}, file in",
        "rate": round(len(timed) / sent_seconds),
        "events": len(timed),
        "missing": len(produced) - len(latencies),
        "latency_ms": pct(latencies),
        "in_worker_ms": pct([in_worker[k] for k in produced if k in in_worker]),
        "out": out,
        "broker_cpu_cores": broker_share,  # the broker's CPU use while this engine ran
    }


def _poll(consumer: Any) -> list[Any]:
    """What arrived, returning at the first record (`consume(n, t)` would wait to fill n)."""
    first = consumer.poll(0.05)
    return [] if first is None else [first, *consumer.consume(1000, 0)]


def measure_broker_hop(broker: KafkaBroker, rate: float, n: int) -> dict[str, Any]:
    """The floor under every engine: one produce → consume hop through the same broker at the
    same rate, nothing in between (the end-to-end path has two: events in, predictions out)."""
    from confluent_kafka import Consumer, Producer

    broker.create_topic("bench.hop", 4)
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "bench-hop",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 400,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe(["bench.hop"])
    latencies: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for m in _poll(consumer):
                if m.error() is None and m.value():
                    latencies.append((time.time() - float(m.value())) * 1000)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    time.sleep(3)  # the reader joins its group
    started = time.time()
    for i in range(n):
        delay = started + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        producer.produce("bench.hop", repr(time.time()).encode(), str(i % 50).encode())
        producer.poll(0)
    producer.flush()
    deadline = time.time() + 30
    while len(latencies) < n and time.time() < deadline:
        time.sleep(0.1)
    done.set()
    reader.join()
    consumer.close()
    return pct(latencies[n // 10 :])


# -- 2. throughput of one worker --------------------------------------------------------------


def measure_throughput(
    project: Project, broker: KafkaBroker, evs: list[dict[str, Any]], threads: int = 1
) -> dict[str, Any]:
    """One in-process worker with `stream.model_threads` = `threads`, file in, then Kafka in."""
    from tsops.streaming.runner import replay_to_kafka, run_stream

    folder = Path(tempfile.mkdtemp())
    path = folder / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in evs))
    out: dict[str, Any] = {}
    topic = f"bench.throughput.{threads}"
    env = {
        "TSOPS_STREAM__MODEL_THREADS": str(threads),
        "TSOPS_STREAM__KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "TSOPS_STREAM__KAFKA__EVENTS_TOPIC": topic,
        "TSOPS_STREAM__KAFKA__GROUP_ID": f"bench-{topic}",
    }
    os.environ.update(env)
    try:
        loaded = Project.load(project.root)
        reset(loaded)
        summary = run_stream(loaded, source=f"file:{path}")
        out["file"] = _throughput(summary)
        reset(loaded)
        replay_to_kafka(loaded, path, topic=topic)
        summary = run_stream(loaded, source="kafka", max_events=len(evs))
        out["kafka"] = _throughput(summary)
    finally:
        for key in env:
            os.environ.pop(key, None)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def _throughput(summary: Any) -> dict[str, Any]:
    """Events per second from the first record to the last checkpoint (the rate the summary
    gives); `waited`: the seconds before the first record (a Kafka group join: ~1 s)."""
    waited = getattr(summary, "waited", 0.0)  # (a tsops before it counted the wait: for A/B runs)
    busy = summary.seconds - waited
    return {
        "events": summary.consumed,
        "seconds": summary.seconds,
        "waited": waited,
        "ev_s": summary.consumed / busy if busy > 0 else 0.0,
        "wall_ev_s": summary.consumed / summary.seconds if summary.seconds else 0.0,
    }


def measure_model_forward(project: Project, rows: int, threads: int) -> float:
    """Microseconds per event of the champion's forward alone (`Forecaster.predict_matrix`, as
    the worker calls it, on `rows` feature rows of the offline store), with `threads` torch
    threads: the ceiling it puts on one worker's throughput. Best of 5 rounds."""
    import torch

    from tsops import registry
    from tsops.features.store import FeatureStoreClient

    client = FeatureStoreClient(project)
    offline = client.read_offline().dropna(subset=client.features.names).tail(rows)
    names = tuple(client.features.names)
    matrix = offline[list(names)].to_numpy(np.float64)
    _, forecaster = registry.load_forecaster(project)
    torch.set_num_threads(threads)
    forecaster.predict_matrix(matrix, names)  # warm-up
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(max(1, 5000 // len(matrix))):
            forecaster.predict_matrix(matrix, names)
        best = min(best, (time.perf_counter() - started) / max(1, 5000 // len(matrix)))
    return best / len(matrix) * 1e6


# -- 3. per-event Feast writes ----------------------------------------------------------------


def measure_feast_per_event(project: Project, evs: list[dict[str, Any]]) -> dict[str, Any]:
    from tsops import registry
    from tsops.features.engines import update
    from tsops.features.store import FEATURE_VIEW, FeatureStoreClient

    reset(project)
    client = FeatureStoreClient(project)
    _, forecaster = registry.load_forecaster(project)
    series = project.settings.series
    names = client.features.names
    states = client.read_states(sorted({e["entity_id"] for e in evs}))
    per_event: list[float] = []
    for e in evs:
        t0 = time.perf_counter()
        ts = pd.Timestamp(e["timestamp"])
        feats = update(client.features, states[e["entity_id"]], ts, e["value"])
        row = pd.DataFrame([{series.entity_col: e["entity_id"], series.time: ts.tz_localize("UTC"), **feats}])
        client.store.write_to_online_store(FEATURE_VIEW, row)
        forecaster.predict(pd.DataFrame([feats], columns=names))
        per_event.append((time.perf_counter() - t0) * 1000)
    seconds = sum(per_event) / 1000
    return {"events": len(evs), "ev_s": len(evs) / seconds, "service_ms": pct(per_event)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", type=Path)
    parser.add_argument("--entities", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--throughput-events", type=int, default=50_000)
    parser.add_argument("--feast-events", type=int, default=1000)
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument(
        "--model-threads",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2],
        help="stream.model_threads values to measure throughput with (comma-separated)",
    )
    parser.add_argument(
        "--out",
        choices=["file", "kafka"],
        default="file",
        help="where a prediction counts as available: fsynced to the JSONL sink (one broker hop), "
        "or read back from a Kafka topic (two hops through the broker)",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tsops-bench-stream-"))
    project = Project.load(args.project) if args.project else prepare_project(tmp, args.entities)
    entities = project.settings.data.synthetic.entities  # type: ignore[union-attr]
    broker = KafkaBroker().start()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "entities": entities}
    try:
        steps = int(args.rate * args.seconds * 1.12 / entities) + 1
        latency_events = events(project, steps)
        print("broker floor: one produce → consume hop …", flush=True)
        results["broker_hop_ms"] = measure_broker_hop(broker, args.rate, int(args.rate * 5))
        engines = ["python"] + ([] if args.skip_spark else ["spark"])
        results["latency"] = []
        for engine in engines:
            reset(project)
            print(f"latency: {engine} engine at {args.rate:.0f} events/s …", flush=True)
            results["latency"].append(
                measure_latency(project, broker, engine, latency_events, args.rate, engine, args.out)
            )
        reset(project)
        print(f"latency: python engine, file in, at {args.rate:.0f} events/s …", flush=True)
        results["latency"].append(
            measure_latency(project, broker, "python", latency_events, args.rate, "file-in", "file", "file")
        )
        print("throughput: one python-engine worker …", flush=True)
        many = events(project, args.throughput_events // entities)
        results["throughput"] = measure_throughput(project, broker, many)
        results["throughput_by_threads"] = {1: results["throughput"]}
        results["forward_us"] = {}
        for n in args.model_threads:
            if n != 1:
                print(f"throughput: one python-engine worker, model_threads {n} …", flush=True)
                results["throughput_by_threads"][n] = measure_throughput(project, broker, many, n)
            results["forward_us"][n] = measure_model_forward(project, 500, n)
        print("per-event Feast writes …", flush=True)
        results["feast_per_event"] = measure_feast_per_event(project, many[: args.feast_events])
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)


def report(r: dict[str, Any]) -> None:
    print()
    print(f"machine: {r['cpus']} CPUs; {r['entities']} entities; SQLite online store; tansu broker")
    where = "in the Kafka topic" if r["latency"][0]["out"] == "kafka" else "fsynced to the JSONL sink"
    print(f"latency = event produced → prediction {where}")
    header = f"{'engine':<22}{'rate ev/s':>10}{'events':>8}{'missing':>8}"
    print(f"{header}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for row in r["latency"]:
        lat = row["latency_ms"]
        print(
            f"{row['engine']:<22}{row['rate']:>10}{row['events']:>8}{row['missing']:>8}"
            f"{lat.get('p50', float('nan')):>10.1f}{lat.get('p99', float('nan')):>10.1f}"
            f"{lat.get('max', float('nan')):>10.1f}"
        )
    for row in r["latency"]:
        w = row.get("in_worker_ms") or {}
        if w.get("p50") is not None:
            print(
                f"  {row['engine']} in the worker (poll → prediction): p50 {w['p50']:.1f} ms, "
                f"p99 {w['p99']:.1f} ms"
            )
        if row.get("broker_cpu_cores") is not None:
            print(f"  {row['engine']}: the broker used {row['broker_cpu_cores']:.2f} of {r['cpus']} cores")
    hop = r.get("broker_hop_ms") or {}
    if hop.get("p50") is not None:
        print(
            f"  broker floor, one hop with nothing in between: p50 {hop['p50']:.1f} ms, "
            f"p99 {hop['p99']:.1f} ms (end to end crosses two)"
        )
    by = {row["engine"]: row["latency_ms"] for row in r["latency"]}
    if "spark" in by and by["python"].get("p50"):
        print(f"p50 ratio spark / tsops: {by['spark']['p50'] / by['python']['p50']:.1f}x (goal ≥ 15x)")
    p99 = by["python"].get("p99", float("nan"))
    print(f"tsops p99 at {r['latency'][0]['rate']} ev/s: {p99:.1f} ms (goal ≤ 25)")
    if "python, file in" in by:
        direct = by["python, file in"].get("p99", float("nan"))
        print(f"tsops p99 without the broker (file in): {direct:.1f} ms")
    t = r["throughput"]
    file, kafka = t["file"], t["kafka"]
    print(
        f"one worker, as fast as it can (from its first record): file {file['ev_s']:,.0f} ev/s "
        f"({file['events']} events); kafka {kafka['ev_s']:,.0f} ev/s, "
        f"{kafka['ev_s'] / file['ev_s']:.0%} of file (goal ≥ 90%)"
    )
    print(
        f"  before the first record: file {file.get('waited', 0):.2f} s, "
        f"kafka {kafka.get('waited', 0):.2f} s "
        f"(the group join); wall clock with it: file {file.get('wall_ev_s', 0):,.0f}, "
        f"kafka {kafka.get('wall_ev_s', 0):,.0f} ev/s"
    )
    for n, row in r.get("throughput_by_threads", {}).items():
        forward = r["forward_us"][n]
        beyond = 1e6 / row["file"]["ev_s"] - forward
        print(
            f"  model_threads {n}: file {row['file']['ev_s']:,.0f}, kafka {row['kafka']['ev_s']:,.0f} ev/s; "
            f"the forward alone {forward:.1f} µs/event at 500 rows (goal ≤ 25), the rest of the worker "
            f"{beyond:.1f} µs/event (goal ≤ 20)"
        )
    f = r["feast_per_event"]
    print(
        f"per-event Feast write + predict: {f['ev_s']:,.0f} ev/s, "
        f"service p50 {f['service_ms']['p50']:.2f} ms, "
        f"p99 {f['service_ms']['p99']:.2f} ms; tsops kafka worker is "
        f"{t['kafka']['ev_s'] / f['ev_s']:.0f}x the throughput"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
