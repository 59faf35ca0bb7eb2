"""The stream processor on file replays: summaries, parity with the batch engine, dead
letters, idempotent replays and the SQL sink."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, synthetic_events, write_jsonl
from tsops.features.engines import batch_features
from tsops.features.store import FeatureStoreClient
from tsops.streaming.runner import run_stream


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_stream_equals_batch(project, events: list[dict]) -> None:
    """Online features and state of every entity equal the batch engine over history+events,
    and the offline store holds exactly the batch engine's rows."""
    client = FeatureStoreClient(project)
    client.compact_offline()
    offline = client.read_offline()
    history = pd.read_parquet(project.data_path)
    added = pd.DataFrame(events)
    added["timestamp"] = pd.to_datetime(added["timestamp"])
    full = (
        pd.concat([history, added])
        .drop_duplicates(["entity_id", "timestamp"])
        .sort_values(["entity_id", "timestamp"])
        .reset_index(drop=True)
    )
    expected = batch_features(full, client.features, entity="entity_id", time="timestamp", target="value")
    names = client.features.names
    assert len(offline) == len(expected)
    got = offline.sort_values(["entity_id", "timestamp"])[names].to_numpy(float)
    assert np.allclose(got, expected[names].to_numpy(float), atol=1e-6, equal_nan=True)
    last = expected.groupby("entity_id").tail(1).set_index("entity_id")
    online = client.online(list(last.index)).set_index("entity_id")
    assert np.allclose(online[names].to_numpy(float), last[names].to_numpy(float), atol=1e-6)
    states = client.read_states(list(last.index))
    for entity, row in last.iterrows():
        assert states[entity].last_time == row["timestamp"]


def test_file_replay_prints_a_json_summary_and_writes_predictions(stream_project, tmp_path):
    project = stream_project()
    events = synthetic_events(project, 30)
    path = write_jsonl(tmp_path / "events.jsonl", events)
    result = run_cli("stream", "--project", str(project.root), "--source", f"file:{path}", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["consumed"] == summary["processed"] == summary["predictions"] == 150
    assert summary["dead_letters"] == {}
    predictions = read_jsonl(project.root / ".tsops" / "predictions.jsonl")
    assert len(predictions) == 150
    first = predictions[0]
    assert first["key"] == f"{first['entity']}|{first['event_time']}|{first['model_version']}"
    assert len(first["values"]) == len(first["target_times"]) == 24
    assert pd.Timestamp(first["target_times"][0]) == pd.Timestamp(first["event_time"]) + pd.Timedelta("1h")
    assert set(first["intervals"]) == {"80", "95"}
    low, high = first["intervals"]["80"]["lower"], first["intervals"]["80"]["upper"]
    assert len(low) == len(high) == 24 and all(
        lo < v < hi for lo, v, hi in zip(low, first["values"], high, strict=True)
    )
    assert_stream_equals_batch(project, events)


def test_predictions_equal_the_model_on_batch_features(stream_project, tmp_path):
    import torch

    from tsops import registry

    project = stream_project(stream={"model_threads": 2})
    events = synthetic_events(project, 10)
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', events)}")
    assert torch.get_num_threads() == 2  # the worker's forward ran on two threads
    client = FeatureStoreClient(project)
    offline = client.read_offline()
    predictions = read_jsonl(project.root / ".tsops" / "predictions.jsonl")
    _, forecaster = registry.load_forecaster(project)
    for p in predictions[:20]:
        row = offline[
            (offline["entity_id"] == p["entity"]) & (offline["timestamp"] == pd.Timestamp(p["event_time"]))
        ]
        assert np.allclose(forecaster.predict(row[client.features.names])[0], p["values"], atol=1e-5)


def test_replaying_the_same_events_changes_nothing(stream_project, tmp_path):
    project = stream_project()
    events = synthetic_events(project, 20)
    path = write_jsonl(tmp_path / "events.jsonl", events)
    first = run_stream(project, source=f"file:{path}")
    online_before = FeatureStoreClient(project).online(["e000", "e004"])
    again = run_stream(project, source=f"file:{path}", from_beginning=True)
    assert first.predictions == 100 and again.predictions == 0 and again.processed == 0
    assert sum(again.dead_letters.values()) == 100  # all duplicates or late, none applied
    pd.testing.assert_frame_equal(FeatureStoreClient(project).online(["e000", "e004"]), online_before)
    assert_stream_equals_batch(project, events)


def test_gaps_are_filled_like_the_batch_policy(stream_project, tmp_path):
    project = stream_project()
    events = synthetic_events(project, 12)
    kept = [e for i, e in enumerate(events) if not (e["entity_id"] == "e001" and 10 <= i < 40)]
    summary = run_stream(project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', kept)}")
    assert summary.gap_steps_filled == 6 and summary.dead_letters == {}
    expected = list(events)
    frame = pd.DataFrame(events)
    e1 = frame[frame["entity_id"] == "e001"].reset_index(drop=True)
    missing = frame.index.isin([i for i, e in enumerate(events) if e["entity_id"] == "e001" and 10 <= i < 40])
    interpolated = e1["value"].where(~e1["timestamp"].isin(frame[missing]["timestamp"])).interpolate()
    expected = [e for e in events if e["entity_id"] != "e001"] + [
        {"entity_id": "e001", "timestamp": t, "value": v}
        for t, v in zip(e1["timestamp"], interpolated, strict=True)
    ]
    assert_stream_equals_batch(project, expected)


def test_poison_events_go_to_dead_letters_and_counts_reconcile(stream_project, tmp_path):
    project = stream_project(stream={"unknown_entities": "dead_letter"})
    events = synthetic_events(project, 40)  # 200 valid events
    poison = {
        "invalid_json": '{"entity_id": "e000", "timestamp": ',
        "missing_field": json.dumps({"entity_id": "e000", "value": 1.0}),
        "wrong_type": json.dumps({"entity_id": "e000", "timestamp": "2030-01-01", "value": "hot"}),
        "non_finite": '{"entity_id": "e000", "timestamp": "2024-05-01T00:00:00", "value": NaN}',
        "unknown_entity": json.dumps({"entity_id": "zzz", "timestamp": "2024-05-01", "value": 1.0}),
        "future_timestamp": json.dumps({"entity_id": "e000", "timestamp": "2999-01-01", "value": 1.0}),
    }
    lines: list = list(events)
    lines.insert(150, poison["invalid_json"])
    lines.insert(10, poison["missing_field"])
    lines.insert(60, poison["wrong_type"])
    lines.insert(70, poison["non_finite"])
    lines.insert(80, poison["unknown_entity"])
    lines.insert(90, poison["future_timestamp"])
    lines.insert(lines.index(events[100]) + 1, json.dumps(events[100]))  # an exact duplicate
    lines.append(json.dumps(events[5]))  # late: far behind its entity
    result = run_cli(
        "stream",
        "--project",
        str(project.root),
        "--source",
        f"file:{write_jsonl(tmp_path / 'e.jsonl', lines)}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["consumed"] == len(lines) == 208
    assert summary["processed"] == 200
    assert summary["processed"] + sum(summary["dead_letters"].values()) == summary["consumed"]
    assert summary["dead_letters"] == {**dict.fromkeys(poison, 1), "duplicate": 1, "late": 1}
    dead = read_jsonl(project.root / ".tsops" / "dead_letters.jsonl")
    by_reason = {d["error"]: d for d in dead}
    for reason, payload in poison.items():
        assert by_reason[reason]["payload"] == payload
        assert by_reason[reason]["detail"]
    assert_stream_equals_batch(project, events)


def test_sql_sink_on_postgresql_is_idempotent(stream_project, postgres_server, tmp_path):
    import sqlalchemy as sa

    url = postgres_server.create_database("stream_sink")
    project = stream_project(stream={"sinks": [{"type": "sql", "url": url, "table": "predictions"}]})
    events = synthetic_events(project, 8)
    path = write_jsonl(tmp_path / "e.jsonl", events)
    run_stream(project, source=f"file:{path}")
    (project.state_dir / "checkpoints").rename(tmp_path / "old-checkpoints")
    run_stream(project, source=f"file:{path}")  # from the start again: nothing new
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select key, record from predictions")).all()
    engine.dispose()
    assert len(rows) == 40
    assert {json.loads(r.record)["key"] for r in rows} == {r.key for r in rows}


def ticks_for(bars: list[dict], entity: str = "entity_id") -> list[dict]:
    """Four ticks per bar at :00 :15 :30 :45 whose mean is the bar's value, in time order
    except that each bar's :45 tick arrives after the next bar's :00 and :15 ticks."""
    out: list[tuple[pd.Timestamp, int, dict]] = []
    for b in bars:
        start = pd.Timestamp(b["timestamp"])
        for i, (minutes, d) in enumerate([(0, 1.0), (15, -1.0), (30, 2.0), (45, -2.0)]):
            arrival = start + pd.Timedelta(minutes=75 if minutes == 45 else minutes)
            tick = {entity: b[entity], "timestamp": (start + pd.Timedelta(minutes=minutes)).isoformat()}
            out.append((arrival, i, {**tick, "value": b["value"] + d}))
    return [t for _, _, t in sorted(out, key=lambda x: (x[0], x[1], x[2][entity]))]


def test_ticks_aggregate_into_bars_with_allowed_lateness(stream_project, tmp_path):
    project = stream_project(stream={"aggregate": {"how": "mean", "allowed_lateness": "20min"}})
    bars = synthetic_events(project, 12)
    ticks = ticks_for(bars)
    too_late = {"entity_id": "e000", "timestamp": bars[0]["timestamp"], "value": 99.0}
    path = write_jsonl(tmp_path / "ticks.jsonl", [*ticks, too_late])
    summary = run_stream(project, source=f"file:{path}")
    entities = {b["entity_id"] for b in bars}
    # Each entity's last bar is still open: no tick has passed its end by the lateness yet.
    assert summary.processed == len(ticks) and summary.dead_letters == {"late": 1}
    assert summary.bars_closed == summary.predictions == len(bars) - len(entities)
    closed = [b for b in bars if b["timestamp"] < max(x["timestamp"] for x in bars)]
    assert_stream_equals_batch(project, closed)
    predictions = read_jsonl(project.root / ".tsops" / "predictions.jsonl")
    assert {p["event_time"] for p in predictions} == {
        pd.Timestamp(b["timestamp"]).isoformat() for b in closed
    }


def test_open_bars_survive_a_restart_and_a_replay_adds_nothing_twice(stream_project, tmp_path):
    project = stream_project(stream={"aggregate": {"how": "last"}})
    bars = synthetic_events(project, 6)
    ticks = sorted(ticks_for(bars), key=lambda t: t["timestamp"])
    half = len(ticks) // 2 + 3  # cut inside a bar, so its ticks span both runs
    first = write_jsonl(tmp_path / "a.jsonl", ticks[:half])
    second = write_jsonl(tmp_path / "b.jsonl", ticks[half:])
    run_stream(project, source=f"file:{first}")
    run_stream(project, source=f"file:{first}", from_beginning=True)  # a replay: all duplicates
    again = run_stream(project, source=f"file:{second}")
    assert again.dead_letters == {}
    # `last` = the :45 tick of each bar (value - 2); the final bar of each entity is open.
    final = max(b["timestamp"] for b in bars)
    closed = [{**b, "value": b["value"] - 2.0} for b in bars if b["timestamp"] < final]
    assert_stream_equals_batch(project, closed)


def promote_mid_stream(project, run, tmp_path: Path, settle_s: float) -> tuple[list[dict], int, int, dict]:  # type: ignore[no-untyped-def]
    """Stream 50 events through `run(path, stop)` (an engine following a file, in a thread),
    promote a new registry version of the same model, wait `settle_s`, append 50 more events.
    Returns (prediction records, old version, new version, what `run` returned)."""
    import threading
    import time

    from mlflow import MlflowClient

    name = project.settings.model.name
    client = MlflowClient(project.tracking_uri, project.tracking_uri)
    old = client.get_model_version_by_alias(name, "champion")
    events = synthetic_events(project, 20)
    path = write_jsonl(tmp_path / "events.jsonl", events[:50])
    stop = threading.Event()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(summary=run(path, stop)))
    worker.start()
    out = project.root / ".tsops" / "predictions.jsonl"

    def wait_for(n: int) -> list[dict]:
        deadline = time.time() + 180
        while time.time() < deadline:
            rows = read_jsonl(out) if out.exists() else []
            if len(rows) >= n:
                return rows
            assert worker.is_alive(), "the engine stopped early"
            time.sleep(0.2)
        raise AssertionError(f"fewer than {n} predictions")

    try:
        wait_for(50)
        new = client.create_model_version(name, old.source, old.run_id)  # a real new registry version
        client.set_registered_model_alias(name, "champion", new.version)
        time.sleep(settle_s)  # several checks of the registry: the engine has switched
        with path.open("a") as f:
            f.writelines(json.dumps(e) + "\n" for e in events[50:])
        rows = wait_for(len(events))
    finally:
        stop.set()
        worker.join(120)
        client.set_registered_model_alias(name, "champion", old.version)  # other tests share the registry
    assert_stream_equals_batch(project, events)
    return rows, int(old.version), int(new.version), result


def test_a_running_worker_switches_to_a_new_champion(stream_project, tmp_path):
    project = stream_project(stream={"reload_interval_s": 0.3, "checkpoint_interval_ms": 0})
    rows, old, new, result = promote_mid_stream(
        project,
        lambda path, stop: run_stream(project, source=f"file:{path}", follow=True, stop=stop),
        tmp_path,
        settle_s=3,
    )
    assert result["summary"].reloads == 1
    assert [r["model_version"] for r in rows] == [old] * 50 + [new] * 50
    assert all(r["key"].endswith(f"|{r['model_version']}") for r in rows)


def test_the_stream_joins_its_forecasts_with_later_actuals(stream_project, tmp_path):
    from tsops.monitoring.history import ALL_STEPS, MonitorHistory

    project = stream_project(monitoring={"accuracy_window": 100_000, "snapshot_interval_s": 0})
    events = synthetic_events(project, 40)
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', events)}")
    actual = {(e["entity_id"], pd.Timestamp(e["timestamp"])): e["value"] for e in events}
    errors_by_step: dict[int, list[float]] = {}
    for p in read_jsonl(project.root / ".tsops" / "predictions.jsonl"):
        for h, (t, v) in enumerate(zip(p["target_times"], p["values"], strict=True), start=1):
            if (p["entity"], pd.Timestamp(t)) in actual:
                errors_by_step.setdefault(h, []).append(abs(v - actual[(p["entity"], pd.Timestamp(t))]))
    history = MonitorHistory.for_project(project)
    latest = {row.step: row for row in history.latest_accuracy()}
    history.close()
    assert set(latest) == {ALL_STEPS, *errors_by_step}
    for h, errors in errors_by_step.items():
        assert latest[h].n == len(errors)
        assert latest[h].mae == pytest.approx(np.mean(errors), rel=1e-9)


def test_a_followed_file_returns_records_as_they_arrive_and_never_half_a_line(stream_project, tmp_path):
    from tsops.streaming.sources import FileSource

    project = stream_project()
    path = tmp_path / "live.jsonl"
    path.write_text('{"a": 1}\n')
    source = FileSource(project, path, follow=True, from_beginning=True)
    first = source.poll(100, timeout=5.0)  # returns at once with what is there
    assert [r.payload for r in first] == ['{"a": 1}']
    with path.open("a") as f:
        f.write('{"b": ')  # a writer caught mid-line
        f.flush()
        assert source.poll(100, timeout=0.1) == []
        f.write("2}\n")
    assert [r.payload for r in source.poll(100, timeout=1.0)] == ['{"b": 2}']
    source.close()


def test_a_paced_replay_returns_each_event_when_it_is_due(stream_project, tmp_path):
    """Accelerated time: an hourly series at speedup 18,000 is one event every 0.2 s; a poll
    returns what is due at once instead of holding it until the poll's timeout."""
    import time as clock

    from tsops.streaming.sources import FileSource

    project = stream_project()
    path = tmp_path / "paced.jsonl"
    times = pd.date_range("2024-05-01", periods=4, freq="h")
    path.write_text("".join(json.dumps({"timestamp": t.isoformat(), "value": 1.0}) + "\n" for t in times))
    source = FileSource(project, path, speedup=18_000.0)
    started = clock.monotonic()
    polls = []
    while not source.exhausted:
        got = source.poll(100, timeout=5.0)
        if got:
            polls.append((round(clock.monotonic() - started, 2), len(got)))
    source.close()
    assert [n for _, n in polls] == [1, 1, 1, 1]
    assert polls[0][0] < 0.1  # the first event at once, not after the 5 s timeout
    assert all(0.15 < b - a < 0.4 for (a, _), (b, _) in zip(polls, polls[1:], strict=False))


def test_offline_compactions_take_turns(stream_project):
    """Training, the monitor's report and a stream's end may compact at once: one at a time."""
    import fcntl
    import threading

    project = stream_project()
    client = FeatureStoreClient(project)
    base = client.read_offline()
    time_col = project.settings.series.time
    rows = base.tail(3).copy()
    rows[time_col] = rows[time_col] + pd.Timedelta(days=1000)  # three new observations
    client.append_offline(rows)
    with (project.offline_path.parent / ".compact.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is compacting
        added: list[int] = []
        worker = threading.Thread(target=lambda: added.append(FeatureStoreClient(project).compact_offline()))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and not added  # it waits its turn
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(30)
    assert added == [3]
    assert len(client.read_offline()) == len(base) + 3
    assert not list(client.offline.parts.glob("part-*.parquet"))


def test_a_parquet_sink_holds_the_same_records_as_the_jsonl_sink(stream_project, tmp_path):
    project = stream_project(
        stream={
            "sinks": [
                {"type": "file", "path": ".tsops/predictions.jsonl"},
                {"type": "file", "path": ".tsops/predictions.parquet"},
            ],
            "batch_size": 40,  # several micro-batches: several part files
        }
    )
    events = synthetic_events(project, 30)
    summary = run_stream(project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', events)}")
    jsonl = {r["key"]: r for r in read_jsonl(project.root / ".tsops" / "predictions.jsonl")}
    folder = project.root / ".tsops" / "predictions.parquet"
    assert len(list(folder.glob("part-*.parquet"))) > 1 and not list(folder.glob("*.tmp"))
    parquet = pd.read_parquet(folder)
    assert len(parquet) == len(jsonl) == summary.predictions == 150
    for row in parquet.itertuples(index=False):
        want = jsonl[row.key]
        assert (row.entity, row.event_time, row.model_version) == (
            want["entity"],
            want["event_time"],
            want["model_version"],
        )
        assert list(row.target_times) == want["target_times"]
        assert np.allclose(row.values, want["values"])
