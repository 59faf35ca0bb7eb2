"""Faults of the stream worker's sources (issue 19): poison pills on both sources and both
engines (the Spark engine's test is in test_streaming_spark.py, beside its Spark session), a
file rewritten under its checkpoint, a corrupt checkpoint, `--max-events`, a broker gone for
good (liveness), a disk that fills up. Each test states what a user can rely on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import run_cli, synthetic_events, write_jsonl
from test_streaming import read_jsonl
from tsops.streaming.runner import run_stream

GOOD = b'{"entity_id": "e000", "timestamp": "2024-05-01T00:00:00", "value": 1.0}'


def poison_pills() -> dict[str, bytes]:
    """One payload per way a record used to crash the worker or slip through mangled."""
    return {
        "too_deep": b'{"entity_id": "e000", "x": ' + b"[" * 1100 + b"]" * 1100 + b"}",  # 2.2 KB
        "too_large": b'{"entity_id": "e000", "pad": "' + b"x" * 70_000 + b'"}',
        "invalid_utf8": b'{"entity_id": "e\xff00", "timestamp": "2024-05-01T00:00:00", "value": 1.0}',
        "non_finite": GOOD.replace(b"1.0", b"9" * 400),  # an integer no float holds
        "invalid_event": GOOD.replace(b'"e000"', b"7" * 5000),  # an entity int too long to print
    }


def dead_letters(project) -> list[dict]:  # type: ignore[no-untyped-def]
    return read_jsonl(project.root / ".tsops" / "dead_letters.jsonl")


def with_poison(events: list[dict]) -> bytes:
    lines = [json.dumps(e).encode() for e in events]
    for i, pill in enumerate(poison_pills().values()):
        lines.insert(7 * i + 3, pill)
    return b"\n".join(lines) + b"\n"


def test_a_poison_pill_is_a_dead_letter_and_the_next_run_goes_past_it(stream_project, tmp_path):
    project = stream_project()
    events = synthetic_events(project, 6)  # 30 events
    path = tmp_path / "events.jsonl"
    path.write_bytes(with_poison(events))
    summary = run_stream(project, source=f"file:{path}")
    assert summary.processed == len(events)
    assert dict(summary.dead_letters) == dict.fromkeys(poison_pills(), 1)
    dead = {d["error"]: d for d in dead_letters(project)}
    assert dead["invalid_utf8"]["payload"] == poison_pills()["invalid_utf8"].decode(errors="backslashreplace")
    assert dead["too_deep"]["payload"].startswith('{"entity_id": "e000", "x": [[[')
    assert all(d["detail"] and len(d["detail"]) < 200 for d in dead.values())
    again = run_stream(project, source=f"file:{path}")  # the offsets were committed past them
    assert again.consumed == 0


def test_a_poison_pill_from_kafka_is_a_dead_letter_and_its_offset_committed(stream_project, kafka_broker):
    import threading
    import uuid

    from confluent_kafka import Producer

    topic = f"poison-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    kafka = {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": topic, "group_id": f"g-{topic}"}
    project = stream_project(stream={"source": "kafka", "kafka": kafka})
    events = synthetic_events(project, 3)  # 15 events
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})

    def publish(payloads: list[bytes]) -> None:
        for payload in payloads:
            producer.produce(topic, payload)
        producer.flush(10)

    def run(max_events: int):  # type: ignore[no-untyped-def]
        stop = threading.Event()
        timer = threading.Timer(90, stop.set)  # a hang fails the test instead of the suite
        timer.start()
        try:
            return run_stream(project, max_events=max_events, stop=stop)
        finally:
            timer.cancel()

    publish(with_poison(events[:-1]).splitlines())
    first = run(len(events) - 1 + len(poison_pills()))
    assert first.processed == len(events) - 1
    assert dict(first.dead_letters) == dict.fromkeys(poison_pills(), 1)
    publish([json.dumps(events[-1]).encode()])
    second = run(1)  # starts after the poison: committed with the batch that dead-lettered it
    assert second.processed == 1 and second.dead_letters == {}


def test_parse_applies_the_event_limits_of_the_settings(stream_project):  # type: ignore[no-untyped-def]
    import pandas as pd

    from tsops.streaming.events import EventError, parse

    project = stream_project(stream={"max_event_bytes": 100, "max_event_depth": 2})
    series, stream = project.settings.series, project.settings.stream
    limits = {"max_bytes": stream.max_event_bytes, "max_depth": stream.max_event_depth}
    later = pd.Timestamp("2100-01-01")
    event = json.loads(GOOD)
    assert parse(json.dumps({**event, "tags": {"a": 1}}), series, later, **limits).entity == "e000"
    for reason, payload in [
        ("too_deep", {**event, "tags": {"a": [1]}}),
        ("too_large", {**event, "pad": "x" * 50}),
    ]:
        with pytest.raises(EventError) as caught:
            parse(json.dumps(payload), series, later, **limits)
        assert caught.value.kind == reason
    # The worker applies the project's limits, not the defaults (64 KB, depth 32).
    path = write_jsonl(project.root / "pills.jsonl", [{**event, "pad": "x" * 50}, {**event, "t": {"a": [1]}}])
    summary = run_stream(project, source=f"file:{path}")
    assert summary.dead_letters == {"too_large": 1, "too_deep": 1}


def test_max_events_stops_at_the_limit_and_the_next_run_resumes_there(stream_project, tmp_path):
    project = stream_project()
    events = synthetic_events(project, 40)  # 200 events, one poll of the default batch size
    path = write_jsonl(tmp_path / "events.jsonl", events)
    first = run_stream(project, source=f"file:{path}", max_events=75)
    assert first.consumed == 75
    rest = run_stream(project, source=f"file:{path}")
    assert rest.consumed == rest.processed == 125 and rest.dead_letters == {}


def test_a_file_rewritten_at_its_path_is_replayed_from_its_first_line(stream_project, tmp_path, caplog):
    project = stream_project(stream={"duplicates": "drop"})
    events = synthetic_events(project, 60)  # 300 events
    path = write_jsonl(tmp_path / "events.jsonl", events[:100])
    assert run_stream(project, source=f"file:{path}").consumed == 100
    write_jsonl(path, events[100:250])  # rewritten in place (same inode), longer than what was read
    with caplog.at_level(logging.WARNING, logger="tsops.streaming"):
        rewritten = run_stream(project, source=f"file:{path}")
    assert rewritten.consumed == rewritten.processed == 150  # not 50: no line skipped
    assert f"{path} changed since its checkpoint" in caplog.text
    assert rewritten.started_over and rewritten.as_dict()["started_over"] == rewritten.started_over
    with path.open("a") as f:  # appended: resumed where it stopped
        f.writelines(json.dumps(e) + "\n" for e in events[250:])
    assert run_stream(project, source=f"file:{path}").consumed == 50
    replaced = write_jsonl(tmp_path / "new.jsonl", events)  # another file renamed over the path
    replaced.replace(path)
    again = run_stream(project, source=f"file:{path}")
    assert again.consumed == again.dropped == 300  # all read again, none applied twice


def test_a_corrupt_checkpoint_names_the_file_and_what_to_do(stream_project, tmp_path):
    from tsops.errors import DataError
    from tsops.streaming.sources import FileSource

    project = stream_project()
    path = write_jsonl(tmp_path / "events.jsonl", synthetic_events(project, 2))
    run_stream(project, source=f"file:{path}")
    checkpoint = next((project.state_dir / "checkpoints").glob("file-*.json"))
    assert not list(checkpoint.parent.glob("*.tmp"))  # written aside, then renamed
    for content in (b"", b'{"path": "x", "next_li', b"\x00\xffgarbage", b"[1]"):
        checkpoint.write_bytes(content)
        with pytest.raises(DataError) as caught:
            FileSource(project, path)
        assert caught.value.where == str(checkpoint)
        assert "--from-beginning" in str(caught.value) and "delete it" in str(caught.value)
    result = run_cli("stream", "--project", str(project.root), "--source", f"file:{path}")
    assert result.returncode == 2, result.stderr
    assert str(checkpoint) in result.stderr and "Traceback" not in result.stderr
    FileSource(project, path, from_beginning=True).close()  # the way out it names works


@pytest.fixture()
def small_disk(tmp_path):  # type: ignore[no-untyped-def]
    """A 40 MB tmpfs (the tests run as root), unmounted afterwards."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Take all but about `leave` bytes of the file system."""
    import os

    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(free - leave, 0))
    return filler


def test_a_full_disk_is_a_clear_error_and_loses_nothing(stream_model, small_disk, tmp_path):
    """The final offline merge and the stream itself, on a 40 MB tmpfs filled up."""
    from conftest import write_synthetic_project
    from test_streaming import assert_stream_equals_batch
    from tsops.errors import DiskFull
    from tsops.features.ingest import ingest
    from tsops.features.store import FeatureStoreClient

    project = write_synthetic_project(small_disk / "proj", tracking_uri=stream_model.tracking_uri)
    ingest(project, quiet=True)
    events = synthetic_events(project, 400)  # 2,000 events
    first = write_jsonl(tmp_path / "first.jsonl", events[:400])
    run_stream(project, source=f"file:{first}", follow=True, until_idle=0.3)  # no merge at the end
    client = FeatureStoreClient(project)
    store = client.offline.path
    parts, before = sorted(store.parent.glob("stream/part-*")), store.read_bytes()
    assert parts

    filler = fill(small_disk, 100_000)  # less than the merged file needs
    with pytest.raises(DiskFull) as caught:
        client.compact_offline()
    assert f"disk full at {store}" in str(caught.value) and "nothing is lost" in str(caught.value)
    assert sorted(store.parent.glob("stream/part-*")) == parts and store.read_bytes() == before
    assert not list(store.parent.glob("*.tmp"))  # the partial merge gave its space back

    filler.unlink()
    fill(small_disk, 400_000)  # room for the start, not for 1,600 events' predictions
    rest = write_jsonl(tmp_path / "rest.jsonl", events[400:])
    result = run_cli("stream", "--project", str(project.root), "--source", f"file:{rest}")
    assert result.returncode == 2, result.stderr
    assert "disk full at " + str(project.root) in result.stderr.replace("\n", "")
    assert "Traceback" not in result.stderr

    (small_disk / "filler").unlink()
    run_stream(project, source=f"file:{rest}")  # resumes from its last checkpoint, then merges
    assert_stream_equals_batch(project, events)


def test_a_worker_whose_broker_is_gone_reports_itself_not_live(stream_project, tmp_path, caplog, monkeypatch):
    """Logged once (not per reconnection), /healthz 503 and the gauges after the limit, live
    again when the broker is back."""
    import threading
    import time

    import httpx

    from conftest import free_port
    from tsops import demo_broker as embedded

    broker = embedded.EmbeddedBroker().start()  # this test's own: it is stopped for good
    try:
        project = stream_project(
            stream={
                "source": "kafka",
                "kafka": {"bootstrap_servers": broker.bootstrap, "unreachable_after_s": 2},
            }
        )
        port, stop = free_port(), threading.Event()
        caplog.set_level(logging.INFO, logger="tsops")
        worker = threading.Thread(
            target=run_stream, args=(project,), kwargs={"metrics_port": port, "stop": stop}
        )
        worker.start()

        def healthz(expected: int, timeout: float) -> dict:
            deadline = time.time() + timeout
            while time.time() < deadline:
                assert worker.is_alive()
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    if answer.status_code == expected:
                        return answer.json()
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            raise AssertionError(f"/healthz did not answer {expected} within {timeout} s")

        assert healthz(200, 60)["status"] == "ok"
        time.sleep(2)  # the group joined
        gone = time.time()
        where = broker.bootstrap
        broker.stop()
        body = healthz(503, 20)
        assert time.time() - gone >= 2
        (source,) = body["sources"]
        assert not source["live"] and source["unreachable_s"] >= 2 and where in source["last_error"]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        assert "tsops_stream_live 0.0" in metrics
        assert f'tsops_stream_source_unreachable_seconds{{source="{source["source"]}"}}' in metrics
        time.sleep(2)
        lines = [r.getMessage() for r in caplog.records if r.created > gone]
        assert sum("unreachable" in line for line in lines) == 1, lines
        assert not any("Connection refused" in line and "unreachable" not in line for line in lines), lines

        host, port_text = where.split(":")
        monkeypatch.setattr(embedded, "_free_port", lambda: int(port_text))
        back = embedded.EmbeddedBroker().start()  # a new broker at the same address
        try:
            assert healthz(200, 30)["status"] == "ok"
            assert any("reachable again" in r.getMessage() for r in caplog.records)
        finally:
            stop.set()
            worker.join(60)
            back.stop()
    finally:
        broker.stop()


def test_a_damaged_champion_is_named_and_a_failing_watcher_logs_once(
    stream_model, stream_project, tmp_path, caplog
):
    """A champion whose weights are truncated: `tsops stream` exits 2 naming the version, and an
    alias watcher (serving's, the stream engines') that cannot load it logs one line, not a
    traceback per check, and says when it follows the aliases again."""
    import time
    import uuid

    from mlflow.artifacts import download_artifacts

    from tsops import registry

    name = f"damaged-{uuid.uuid4().hex[:8]}"
    project = stream_project(model={"name": name})
    client = registry.connect(stream_model)
    good = client.get_model_version_by_alias(stream_model.settings.model.name, registry.CHAMPION)
    copy = Path(download_artifacts(artifact_uri=good.source, dst_path=str(tmp_path / "copy")))
    weights = next(copy.rglob("weights.pt"))
    intact = weights.read_bytes()
    weights.write_bytes(intact[:100])
    client = registry.connect(project)
    client.create_registered_model(name)
    damaged = client.create_model_version(name, source=str(copy), run_id=good.run_id).version
    client.set_registered_model_alias(name, registry.CHAMPION, damaged)

    path = write_jsonl(tmp_path / "events.jsonl", synthetic_events(project, 2))
    result = run_cli("stream", "--project", str(project.root), "--source", f"file:{path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"models:/{name}/{damaged}" in result.stderr and "damaged" in result.stderr
    assert "Traceback" not in result.stderr

    watcher = registry.AliasWatcher(
        project,
        interval_s=0.05,
        installed=lambda alias: None,
        on_move=lambda alias, version: registry.load(project, version=version),
        who="watcher-under-test",
    )
    with caplog.at_level(logging.INFO, logger="tsops.registry"):
        watcher.start()
        try:
            time.sleep(2)  # many checks, each failing to load the damaged version
            failures = [r for r in caplog.records if r.name == "tsops.registry"]
            weights.write_bytes(intact)  # repaired: the next check loads it
            deadline = time.time() + 30
            again = "following the registry's aliases again"
            while not any(again in r.getMessage() for r in caplog.records) and time.time() < deadline:
                time.sleep(0.1)
        finally:
            watcher.stop()
    (line,) = failures
    assert line.exc_info is None and f"models:/{name}/{damaged}" in line.getMessage()
    messages = [r.getMessage()[:300] for r in caplog.records if r.name == "tsops.registry"]
    assert any("following the registry's aliases again" in m for m in messages), messages
