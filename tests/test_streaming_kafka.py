"""The stream processor on a real Kafka-protocol broker: crash safety under SIGKILL, two
workers sharing partitions through a rebalance, graceful SIGTERM, a broker outage."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from conftest import TSOPS, free_port, synthetic_events, write_jsonl
from test_streaming import assert_stream_equals_batch, read_jsonl
from tsops.streaming.runner import replay_to_kafka

PARTITIONS = 4


def kafka_project(stream_project, broker, **extra):  # type: ignore[no-untyped-def]
    topic = f"events-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, PARTITIONS)
    return stream_project(
        stream={
            "source": "kafka",
            "batch_size": 500,
            "kafka": {"bootstrap_servers": broker.bootstrap, "events_topic": topic, "group_id": f"g-{topic}"},
        },
        **extra,
    )


def start_worker(project, log: Path, metrics_port: int | None = None) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    extra = ["--metrics-port", str(metrics_port)] if metrics_port else []
    return subprocess.Popen(
        [*TSOPS, "stream", "--project", str(project.root), "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
    )


def predictions_file(project) -> Path:  # type: ignore[no-untyped-def]
    return project.root / ".tsops" / "predictions.jsonl"


def count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


class PredictedKeys:
    """The `entity|time` keys that have a prediction in a project's predictions file, read
    incrementally: the crash test's file grows to hundreds of MB, and parsing all of it on
    every poll took a core from the worker it waits for."""

    def __init__(self, path: Path):
        self.path = path
        self.read_up_to = 0  # bytes: the complete lines already parsed
        self.keys: set[str] = set()

    def update(self) -> set[str]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.read_up_to)
                new = f.read()
            complete = new.rfind(b"\n") + 1  # a line still being written is read next time
            for line in new[:complete].splitlines():
                if line.strip():
                    self.keys.add(json.loads(line)["key"].rsplit("|", 1)[0])
            self.read_up_to += complete
        return self.keys


def wait_for_keys(  # type: ignore[no-untyped-def]
    project, expected: set[str], workers, timeout: float, log: Path | None = None
) -> None:
    """Until every key has a prediction; a worker that exits first fails the test with the tail
    of its log (`log`: where the workers write their stderr)."""
    predicted = PredictedKeys(predictions_file(project))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if expected <= predicted.update():
            return
        for w in workers:
            if w.poll() is not None:
                tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
                raise AssertionError(f"worker exited early with {w.returncode}:\n{tail}")
        time.sleep(0.5)
    raise AssertionError(f"not every event got a prediction within {timeout} s")


def wait_until_committed(project, published: int, worker, timeout: float, log: Path) -> None:  # type: ignore[no-untyped-def]
    """Until the group's committed offsets cover all `published` events: what a last worker
    after the crashes must reach before it is stopped. Every key having a prediction is not
    enough: a killed worker may have written them all and committed none."""
    from confluent_kafka import Consumer, TopicPartition

    kafka = project.settings.stream.kafka
    # Not a member of the group (no subscribe): it only reads the group's committed offsets.
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": kafka.group_id})
    partitions = [TopicPartition(kafka.events_topic, p) for p in range(PARTITIONS)]
    deadline = time.time() + timeout
    try:
        while sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10)) < published:
            if worker.poll() is not None:
                raise AssertionError(
                    f"worker exited early with {worker.returncode}:\n{log.read_text()[-4000:]}"
                )
            assert time.time() < deadline, f"the events were not all committed within {timeout} s"
            time.sleep(0.5)
    finally:
        consumer.close()


def wait_until_processing(metrics_port: int, worker: subprocess.Popen[str], timeout: float) -> None:
    """Until the worker's own metrics say it has applied events."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert worker.poll() is None, f"worker exited early with {worker.returncode}"
        try:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
            done = [ln for ln in text.splitlines() if ln.startswith("tsops_stream_events_processed_total")]
            if done and float(done[0].split()[-1]) > 0:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the worker applied no event within {timeout} s")


def stop_gracefully(worker: subprocess.Popen[str]) -> dict:
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


def assert_every_event_predicted_once_or_identically(project, events: list[dict]) -> int:  # type: ignore[no-untyped-def]
    """...and return how many prediction records were written again (identical duplicates)."""
    by_key: dict[str, list[float]] = {}
    records = 0
    for p in read_jsonl(predictions_file(project)):
        if p["key"] in by_key:
            assert np.allclose(by_key[p["key"]], p["values"], atol=1e-9), "a duplicate differs"
        by_key[p["key"]] = p["values"]
        records += 1
    keys = {k.rsplit("|", 1)[0] for k in by_key}
    assert keys == {f"{e['entity_id']}|{e['timestamp']}" for e in events}
    return records - len(by_key)


# How long after its first predictions a worker may be killed: a little more than one
# checkpoint cycle (`stream.checkpoint_interval_ms`, 1 s), so a kill can land before, during
# and after a checkpoint's store writes and offset commit.
KILL_WINDOW_S = 1.2


def kill_at_random_points(project, kills: int, log: Path, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Start a worker, SIGKILL it at a random point once it writes predictions; `kills` times.

    The points are stratified: the window is cut into `kills` equal slots and each worker dies
    at a random point of its own slot (the slots in random order), so every part of the
    checkpoint cycle gets a kill. Drawn from the whole window instead, 20 kills (seed 7) left 3
    of its 12 tenths of a second without one."""
    rng = np.random.default_rng(seed)
    slot = KILL_WINDOW_S / kills
    delays = (rng.permutation(kills) + rng.uniform(0.0, 1.0, kills)) * slot
    for delay in delays:
        # The file's size, not its lines: counting them every 50 ms (hundreds of MB by the
        # last kills) took a core from the starting worker.
        before = size(predictions_file(project))
        worker = start_worker(project, log)
        deadline = time.time() + 120
        while size(predictions_file(project)) <= before and time.time() < deadline:
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(delay)  # a random point of its slot while it processes
        worker.kill()
        worker.wait()


def test_replay_after_crash_changes_nothing(stream_project, kafka_broker, tmp_path):
    project = kafka_project(stream_project, kafka_broker)
    events = synthetic_events(project, 20_000)  # 5 entities → 100k events
    published = replay_to_kafka(project, write_jsonl(tmp_path / "events.jsonl", events))
    assert published["published"] == 100_000
    log = tmp_path / "workers.log"
    started = time.time()
    kill_at_random_points(project, 12, log, seed=7)  # one kill per 0.1 s of the window
    final = start_worker(project, log)
    wait_until_committed(project, len(events), final, timeout=300, log=log)
    summary = stop_gracefully(final)
    duplicates = assert_every_event_predicted_once_or_identically(project, events)
    assert_stream_equals_batch(project, events)
    print(  # the figures of the crash test (pytest -s shows them)
        f"\ncrash test: 100,000 events, 12 SIGKILLs, {time.time() - started:.0f} s; the last worker "
        f"processed {summary['processed']}; {duplicates} prediction records written again "
        f"(identical); 0 missing; online state = batch recomputation"
    )


def test_crash_safety_on_a_redis_online_store(stream_project, kafka_broker, redis_server, tmp_path):
    """The same SIGKILL/restart cycle with the entity states and features living in Redis."""
    project = kafka_project(
        stream_project,
        kafka_broker,
        project=f"stream_redis_{uuid.uuid4().hex[:6]}",
        stores={"online": {"type": "redis", "connection_string": f"127.0.0.1:{redis_server.port}"}},
    )
    assert "redis" in (project.feature_repo / "feature_store.yaml").read_text()
    events = synthetic_events(project, 3000)  # 15k events
    replay_to_kafka(project, write_jsonl(tmp_path / "events.jsonl", events))
    log = tmp_path / "workers.log"
    kill_at_random_points(project, 4, log, seed=11)
    final = start_worker(project, log)
    wait_until_committed(project, len(events), final, timeout=300, log=log)
    stop_gracefully(final)
    assert_every_event_predicted_once_or_identically(project, events)
    assert_stream_equals_batch(project, events)  # read back from Redis
    keys = [k.decode(errors="replace") for k in redis_server.client().scan_iter(count=1000)]
    assert any(project.settings.project in k for k in keys)


def test_two_workers_share_partitions_and_survive_one_leaving(stream_project, kafka_broker, tmp_path):
    project = kafka_project(stream_project, kafka_broker)
    events = synthetic_events(project, 3000)  # 15k events
    log = tmp_path / "workers.log"
    port_a = free_port()
    a, b = start_worker(project, log, port_a), start_worker(project, log)
    producer = threading.Thread(
        target=replay_to_kafka,
        args=(project, write_jsonl(tmp_path / "events.jsonl", events)),
        kwargs={"rate": 2500},
    )
    producer.start()
    wait_until_processing(port_a, a, timeout=180)  # however slow the machine is to start it
    summary_a = stop_gracefully(a)  # SIGTERM mid-run: flush, commit, exit 0
    assert summary_a["processed"] > 0
    producer.join()
    wait_for_keys(project, {f"{e['entity_id']}|{e['timestamp']}" for e in events}, [b], 300, log)
    summary_b = stop_gracefully(b)
    assert summary_b["processed"] > 0
    assert summary_a["processed"] + summary_b["processed"] == len(events)
    assert_every_event_predicted_once_or_identically(project, events)
    assert_stream_equals_batch(project, events)


def test_a_ten_second_broker_outage_loses_nothing(stream_project, kafka_broker, tmp_path):
    project = kafka_project(stream_project, kafka_broker)
    events = synthetic_events(project, 1200)
    log = tmp_path / "workers.log"
    worker = start_worker(project, log)
    producer = threading.Thread(
        target=replay_to_kafka,
        args=(project, write_jsonl(tmp_path / "events.jsonl", events)),
        kwargs={"rate": 1000},
    )
    producer.start()
    time.sleep(3)
    kafka_broker.pause()
    time.sleep(10)
    kafka_broker.resume()
    producer.join()
    wait_for_keys(project, {f"{e['entity_id']}|{e['timestamp']}" for e in events}, [worker], 300, log)
    summary = stop_gracefully(worker)
    assert summary["processed"] == len(events) and summary["dead_letters"] == {}
    assert_every_event_predicted_once_or_identically(project, events)
    assert_stream_equals_batch(project, events)


def test_replay_cli_kafka_sink_and_prometheus_metrics(stream_project, kafka_broker, tmp_path):
    import requests

    from conftest import run_cli
    from servers import free_port

    topic = f"events-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, PARTITIONS)
    out_topic = f"predictions-{uuid.uuid4().hex[:8]}"
    project = stream_project(
        stream={
            "source": "kafka",
            "sinks": [{"type": "kafka", "topic": out_topic}],
            "kafka": {
                "bootstrap_servers": kafka_broker.bootstrap,
                "events_topic": topic,
                "group_id": f"g-{topic}",
            },
        }
    )
    events = synthetic_events(project, 40)
    path = write_jsonl(tmp_path / "events.jsonl", [*events, "not json"])
    published = run_cli("replay", str(path), "--to", "kafka", "--project", str(project.root))
    assert published.returncode == 0, published.stderr
    assert "published 201 events" in published.stdout.replace("\n", " ")

    port = free_port()
    worker = subprocess.Popen(
        [*TSOPS, "stream", "--project", str(project.root), "--json", "--metrics-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    records = kafka_broker.read_all(out_topic, expected=200, timeout=120)
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    deadline = time.time() + 30  # the next checkpoint commits what was seen: no lag left
    while "tsops_stream_consumer_lag 0.0" not in metrics and time.time() < deadline:
        time.sleep(0.5)
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    summary = stop_gracefully(worker)
    assert len(records) == 200
    assert {json.loads(r)["key"].rsplit("|", 1)[0] for r in records} == {
        f"{e['entity_id']}|{e['timestamp']}" for e in events
    }
    assert summary["dead_letters"] == {"invalid_json": 1}
    assert "tsops_stream_events_consumed_total 201.0" in metrics
    assert 'tsops_stream_dead_letters_total{reason="invalid_json"} 1.0' in metrics
    assert "tsops_stream_processing_seconds_bucket" in metrics
    assert "tsops_stream_predictions_total 200.0" in metrics
    assert "tsops_stream_events_processed_total 200.0" in metrics
    assert "tsops_stream_state_entities 5.0" in metrics
    assert "tsops_stream_consumer_lag 0.0" in metrics


def test_consumer_lag_counts_records_seen_but_not_committed(stream_project, kafka_broker, tmp_path):
    """From our own offsets, not the broker's watermarks; a restarted member starts at zero."""
    from tsops.streaming.sources import KafkaSource

    project = kafka_project(stream_project, kafka_broker)
    replay_to_kafka(project, write_jsonl(tmp_path / "events.jsonl", synthetic_events(project, 6)))  # 30

    def poll_all(source: KafkaSource, n: int) -> list:
        got: list = []
        deadline = time.time() + 60
        while len(got) < n and time.time() < deadline:
            got += source.poll(100, 0.2)
        assert len(got) == n
        return got

    source = KafkaSource(project)
    records = poll_all(source, 30)
    assert source.lag() == 30
    source.commit(records[:10])  # a prefix of every partition's records
    assert source.lag() == 20
    source.close()  # 20 seen, not committed: the next member gets them again

    again = KafkaSource(project)
    redelivered = poll_all(again, 20)
    assert {(r.partition, r.offset) for r in redelivered} == {(r.partition, r.offset) for r in records[10:]}
    assert again.lag() == 20  # not 30: the 10 committed before it joined are not lag
    again.commit(redelivered)
    assert again.lag() == 0
    again.close()
