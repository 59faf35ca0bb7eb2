"""The Spark engine (`tsops stream --engine spark`) against the python engine: the same events
through both give the same features, state, predictions and dead letters; the Kafka Python
data source reads the real broker; the engines take over from each other's state; SIGTERM
stops a Kafka query gracefully."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
import uuid
from collections import Counter

import numpy as np
import pytest

from conftest import TSOPS, synthetic_events, write_jsonl, write_synthetic_project
from servers import free_port
from test_streaming import assert_stream_equals_batch, promote_mid_stream, read_jsonl, ticks_for
from tsops.features.store import FeatureStoreClient
from tsops.streaming.runner import replay_to_kafka, run_stream
from tsops.streaming.spark.engine import KafkaLag, run_spark_stream, spark_session


@pytest.fixture(scope="module")
def spark():  # type: ignore[no-untyped-def]
    from tsops.settings import SparkStreamSettings

    session = spark_session(SparkStreamSettings())
    yield session
    session.stop()


@pytest.fixture()
def twin_projects(stream_model, tmp_path):  # type: ignore[no-untyped-def]
    """Two fresh, ingested copies of the small synthetic project: one per engine."""
    from tsops.features.ingest import ingest

    def make(**extra: dict) -> tuple:
        made = []
        for name in ("python", "spark"):
            project = write_synthetic_project(
                tmp_path / name, tracking_uri=stream_model.tracking_uri, extra=extra
            )
            ingest(project, quiet=True)
            made.append(project)
        return tuple(made)

    return make


def metric_value(text: str, name: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def predictions_of(project) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    path = project.root / ".tsops" / "predictions.jsonl"
    return {p["key"]: p for p in read_jsonl(path)} if path.exists() else {}


def dead_letters_of(project) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    path = project.root / ".tsops" / "dead_letters.jsonl"
    return sorted((d["error"], d["payload"]) for d in read_jsonl(path)) if path.exists() else []


def assert_same_outcome(python_project, spark_project, entities: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Online features, state and offline rows equal; every prediction equal to 1e-6."""
    a, b = FeatureStoreClient(python_project), FeatureStoreClient(spark_project)
    names = a.features.names
    online_a, online_b = a.online(entities), b.online(entities)
    assert np.allclose(
        online_a[names].to_numpy(float), online_b[names].to_numpy(float), atol=1e-6, equal_nan=True
    )
    states_a, states_b = a.read_states(entities), b.read_states(entities)
    for e in entities:
        assert states_a[e].last_time == states_b[e].last_time
        assert np.allclose(list(states_a[e].values), list(states_b[e].values), atol=1e-6)
        assert states_a[e].pending.get("bars", {}).keys() == states_b[e].pending.get("bars", {}).keys()
    a.compact_offline()
    b.compact_offline()
    key = ["entity_id", "timestamp"]
    off_a = a.read_offline().sort_values(key).reset_index(drop=True)
    off_b = b.read_offline().sort_values(key).reset_index(drop=True)
    assert off_a[key].equals(off_b[key])
    assert np.allclose(off_a[names].to_numpy(float), off_b[names].to_numpy(float), atol=1e-6, equal_nan=True)
    pa, pb = predictions_of(python_project), predictions_of(spark_project)
    assert pa and pa.keys() == pb.keys()
    for k, p in pa.items():
        assert p["target_times"] == pb[k]["target_times"]
        assert np.allclose(p["values"], pb[k]["values"], atol=1e-6)
    assert dead_letters_of(python_project) == dead_letters_of(spark_project)


def stored_accuracy(project) -> dict[tuple[int, int], tuple[float, int]]:  # type: ignore[no-untyped-def]
    """The latest rolling MAE (and its error count) per (model version, step) the monitor stored."""
    from tsops.monitoring.history import MonitorHistory

    history = MonitorHistory.for_project(project)
    try:
        return {(r.model_version, r.step): (r.mae, r.n) for r in history.latest_accuracy()}
    finally:
        history.close()


def assert_same_accuracy(python_project, spark_project) -> None:  # type: ignore[no-untyped-def]
    """Both engines' monitors stored the same rolling MAE per step for the same events."""
    a, b = stored_accuracy(python_project), stored_accuracy(spark_project)
    assert a and a.keys() == b.keys()
    assert any(step > 0 for _, step in a)
    for key, (mae, n) in a.items():
        assert b[key][1] == n and abs(b[key][0] - mae) <= 1e-6 * max(1.0, abs(mae)), key


def poisoned(events: list[dict]) -> list:
    lines: list = list(events)
    lines.insert(10, json.dumps({"entity_id": "e000", "value": 1.0}))  # missing_field
    lines.insert(30, '{"entity_id": "e001", "timestamp": ')  # invalid_json
    lines.insert(50, json.dumps({"entity_id": "e002", "timestamp": "2024-05-01", "value": "hot"}))
    lines.insert(70, '{"entity_id": "e003", "timestamp": "2024-05-01T00:00:00", "value": NaN}')
    lines.insert(90, json.dumps({"entity_id": "zzz", "timestamp": "2024-05-01", "value": 1.0}))
    lines.insert(110, json.dumps({"entity_id": "e004", "timestamp": "2999-01-01", "value": 1.0}))
    lines.insert(lines.index(events[100]) + 1, json.dumps(events[100]))  # duplicate
    lines.append(json.dumps(events[5]))  # late
    return lines


def test_spark_engine_equals_python_engine_on_a_file_replay_with_poison(twin_projects, spark, tmp_path):
    one_partition = {"shuffle_partitions": 1}  # fewer Python workers; the Kafka test uses 2
    python_project, spark_project = twin_projects(
        stream={"unknown_entities": "dead_letter", "spark": one_partition}
    )
    events = synthetic_events(python_project, 40)
    path = write_jsonl(tmp_path / "events.jsonl", poisoned(events))
    expected = run_stream(python_project, source=f"file:{path}").as_dict()
    got = run_spark_stream(spark_project, source=f"file:{path}", spark=spark).as_dict()
    for field in ("consumed", "processed", "dead_letters", "predictions", "warming_up", "gap_steps_filled"):
        assert got[field] == expected[field], field
    assert got["consumed"] == got["processed"] + sum(got["dead_letters"].values()) == len(events) + 8
    assert got["dead_letters"] == Counter(
        missing_field=1, invalid_json=1, wrong_type=1, non_finite=1, unknown_entity=1,
        future_timestamp=1, duplicate=1, late=1,
    )  # fmt: skip
    entities = sorted({e["entity_id"] for e in events})
    assert_same_outcome(python_project, spark_project, entities)
    assert_same_accuracy(python_project, spark_project)
    assert_stream_equals_batch(spark_project, events)


def test_engines_take_over_from_each_others_state(stream_project, spark, tmp_path):
    project = stream_project(stream={"spark": {"shuffle_partitions": 1}})  # fewer Python workers
    events = synthetic_events(project, 24)  # 5 entities × 24 steps, in time order
    first, second, third = events[:40], events[40:80], events[80:]
    spark_file = write_jsonl(tmp_path / "spark.jsonl", first)
    run_spark_stream(project, source=f"file:{spark_file}", spark=spark)
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'python.jsonl', second)}")
    with spark_file.open("a") as f:  # Spark resumes its checkpoint with stale state of its own
        f.writelines(json.dumps(e) + "\n" for e in third)
    summary = run_spark_stream(project, source=f"file:{spark_file}", spark=spark)
    assert summary.consumed == summary.processed == summary.predictions == len(third)
    assert summary.dead_letters == {}
    assert_stream_equals_batch(project, events)
    keys = {k.rsplit("|", 1)[0] for k in predictions_of(project)}
    assert keys == {f"{e['entity_id']}|{e['timestamp']}" for e in events}


def test_connector_reader_without_its_jar_is_a_config_error(stream_model, spark, kafka_broker, tmp_path):
    from tsops.errors import ConfigError

    kafka = {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": f"e-{uuid.uuid4().hex[:8]}"}
    project = write_synthetic_project(
        tmp_path / "proj",
        tracking_uri=stream_model.tracking_uri,
        extra={"stream": {"source": "kafka", "kafka": kafka, "spark": {"kafka_reader": "connector"}}},
    )
    from tsops.features.ingest import ingest

    ingest(project, quiet=True)  # a project not ingested is refused first, for that reason
    with pytest.raises(ConfigError, match="connector") as caught:
        run_spark_stream(project, spark=spark)
    assert caught.value.where == "stream.spark.kafka_reader"


def test_a_paced_replay_is_refused_by_the_spark_engine(stream_model, tmp_path):
    from tsops.errors import ConfigError

    project = write_synthetic_project(
        tmp_path / "proj", tracking_uri=stream_model.tracking_uri, extra={"stream": {"speedup": 60.0}}
    )
    path = write_jsonl(tmp_path / "e.jsonl", synthetic_events(project, 2))
    with pytest.raises(ConfigError) as caught:
        run_spark_stream(project, source=f"file:{path}")
    assert caught.value.where == "stream.speedup"


def test_kafka_ticks_through_spark_equal_the_python_engine_and_sigterm_stops_it(
    twin_projects, kafka_broker, tmp_path
):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 4)
    python_project, spark_project = twin_projects(
        stream={
            "source": "kafka",
            "aggregate": {"how": "mean", "allowed_lateness": "20min"},
            "kafka": {
                "bootstrap_servers": kafka_broker.bootstrap,
                "events_topic": topic,
                "group_id": f"g-{topic}",
            },
            "spark": {"trigger_interval_ms": 200},
        }
    )
    lines = [*ticks_for(synthetic_events(python_project, 12)), "not json"]
    assert replay_to_kafka(python_project, write_jsonl(tmp_path / "ticks.jsonl", lines))["published"] == len(
        lines
    )
    log = tmp_path / "spark.log"
    port = free_port()
    worker = subprocess.Popen(
        [*TSOPS, "stream", "--project", str(spark_project.root), "--engine", "spark", "--json"]
        + ["--metrics-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        expected = run_stream(python_project, max_events=len(lines)).as_dict()
        want = predictions_of(python_project).keys()
        deadline = time.time() + 240
        while not (want <= predictions_of(spark_project).keys() and dead_letters_of(spark_project)):
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "the Spark engine did not predict every closed bar in time"
            time.sleep(0.5)
        # The Spark engine's monitor saw the actuals (closed bars) and it exports a consumer lag.
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert metric_value(metrics, "tsops_accuracy_actuals_total") > 0
        assert metric_value(metrics, "tsops_stream_consumer_lag") >= 0
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, log.read_text()[-3000:]
    (line,) = out.strip().splitlines()  # --json: stdout is the summary, nothing else
    got = json.loads(line)
    for field in ("consumed", "processed", "dead_letters", "predictions", "bars_closed"):
        assert got[field] == expected[field], field
    assert got["dead_letters"] == {"invalid_json": 1} and got["bars_closed"] > 0
    entities = sorted({x["entity_id"] for x in lines[:-1]})
    assert_same_outcome(python_project, spark_project, entities)


def test_spark_engine_killed_at_random_points_loses_nothing(stream_project, kafka_broker, tmp_path):
    """The whole process group (driver, JVM, Python workers) SIGKILLed while batches run, as a
    machine crash would: each restart replays the uncommitted batch from Spark's checkpoint."""
    import os

    from test_streaming_kafka import (
        assert_every_event_predicted_once_or_identically,
        count_lines,
        wait_for_keys,
    )

    topic = f"events-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 4)
    project = stream_project(
        stream={
            "source": "kafka",
            "kafka": {
                "bootstrap_servers": kafka_broker.bootstrap,
                "events_topic": topic,
                "group_id": f"g-{topic}",
            },
            "spark": {"trigger_interval_ms": 100, "max_events_per_batch": 400},
        }
    )
    events = synthetic_events(project, 800)  # 4,000 events, at least 10 micro-batches
    replay_to_kafka(project, write_jsonl(tmp_path / "events.jsonl", events))
    predictions = project.root / ".tsops" / "predictions.jsonl"
    log = tmp_path / "spark.log"
    command = [*TSOPS, "stream", "--project", str(project.root), "--engine", "spark", "--json"]
    rng = np.random.default_rng(3)
    for _ in range(2):
        before = count_lines(predictions)
        worker = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log.open("a"), start_new_session=True
        )
        deadline = time.time() + 240
        while count_lines(predictions) <= before:
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "the Spark engine wrote no prediction in time"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert count_lines(predictions) < len(events), "the kills came too late to test anything"
    final = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("a"), text=True)
    try:
        wait_for_keys(project, {f"{e['entity_id']}|{e['timestamp']}" for e in events}, [final], 300, log)
        final.send_signal(signal.SIGTERM)
        final.communicate(timeout=120)
    finally:
        if final.poll() is None:
            final.kill()
    assert final.returncode == 0, log.read_text()[-3000:]
    assert_every_event_predicted_once_or_identically(project, events)
    assert_stream_equals_batch(project, events)


def test_a_running_spark_query_switches_to_a_new_champion(spark, stream_project, tmp_path):
    project = stream_project(stream={"reload_interval_s": 0.5, "spark": {"trigger_interval_ms": 200}})
    rows, old, new, result = promote_mid_stream(
        project,
        lambda path, stop: run_spark_stream(
            project, source=f"file:{path}", follow=True, stop=stop, spark=spark
        ),
        tmp_path,
        settle_s=4,
    )
    assert result["summary"].reloads == 1  # the query restarted once, on its checkpoint
    assert [r["model_version"] for r in rows] == [old] * 50 + [new] * 50


def test_spark_consumer_lag_is_the_high_watermarks_past_the_last_batch(stream_model, kafka_broker, tmp_path):
    from confluent_kafka import Producer

    topic = f"lag-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 2)
    project = write_synthetic_project(
        tmp_path / "p",
        tracking_uri=stream_model.tracking_uri,
        extra={"stream": {"kafka": {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": topic}}},
    )
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "linger.ms": 0})
    for partition, n in ((0, 7), (1, 3)):
        for _ in range(n):
            producer.produce(topic, b"{}", partition=partition)
            producer.flush(10)  # one record per produce: the broker's watermarks are exact
    lag = KafkaLag(project)
    try:
        progress = {"sources": [{"endOffset": json.dumps({"0": 2, "1": 3})}]}
        assert lag(progress) == 5
        assert lag({"sources": [{"endOffset": {"0": 7, "1": 0}}]}) == 3
        assert lag(None) is None and lag({"sources": []}) is None
    finally:
        lag.close()


def test_the_spark_engine_dead_letters_the_same_poison_pills(stream_project, spark, tmp_path):
    """The poison pills of `test_faults_stream.py`, through the Spark engine."""
    from test_faults_stream import dead_letters, poison_pills, with_poison

    project = stream_project(stream={"spark": {"shuffle_partitions": 1}})
    path = tmp_path / "events.jsonl"
    path.write_bytes(with_poison(synthetic_events(project, 2)))
    summary = run_spark_stream(project, source=f"file:{path}", spark=spark)
    assert summary.processed == 10
    assert dict(summary.dead_letters) == dict.fromkeys(poison_pills(), 1)
    dead = {d["error"]: d["payload"] for d in dead_letters(project)}
    assert dead["invalid_utf8"] == poison_pills()["invalid_utf8"].decode(errors="backslashreplace")
