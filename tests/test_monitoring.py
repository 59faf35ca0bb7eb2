"""Online accuracy, drift, their Prometheus metrics and history, `tsops monitor` and the
Evidently report: the `StreamMonitor` fed by the real stream processor, and by hand with
records in its format where exact numbers are the point."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conftest import run_cli, synthetic_events, write_jsonl, write_synthetic_project
from servers import free_port
from tsops import registry
from tsops.data.synthetic import DriftSpec, SyntheticSpec, generate_range
from tsops.features.definitions import FeatureSet
from tsops.features.engines import batch_features
from tsops.monitoring.history import ALL_STEPS, MonitorHistory
from tsops.monitoring.monitor import StreamMonitor
from tsops.records import Event
from tsops.streaming.runner import run_stream
from tsops.streaming.steps import prediction_records

H = 24


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bare_project(root: Path, **extra: dict):  # type: ignore[no-untyped-def]
    """Settings only (no store, no model): enough for the accuracy join."""
    return write_synthetic_project(root, extra=extra)


def persistence_batch(project, entity: str, start: int, stop: int, *, version: int = 1, bias: float = 0.0):  # type: ignore[no-untyped-def]
    """Events whose value at step k is k, and the forecasts a persistence model (+ bias) makes
    from them with the stream's record format: the error at horizon step h is exactly h + bias."""
    t0 = pd.Timestamp("2024-06-01")
    events = [Event(entity, t0 + pd.Timedelta(hours=k), float(k)) for k in range(start, stop)]
    forecasts = np.array([[e.value - bias] * H for e in events])
    records = prediction_records(
        events,
        forecasts,
        series=project.settings.series,
        model="m",
        version=version,
        latencies_ms=[0.0] * len(events),
    )
    return events, records


def test_forecasts_join_their_actuals_into_the_exact_rolling_mae_per_version_and_step(tmp_path) -> None:
    project = bare_project(
        tmp_path / "p",
        monitoring={"accuracy_window": 10},
        retrain={"triggers": [{"type": "drift"}], "rollback": {"window": 10}},
    )
    monitor = StreamMonitor(project, persist=False, reference_loader=lambda v: None)
    events, records = persistence_batch(project, "a", 0, 60)
    monitor.on_batch(events, [], records)
    figure = monitor.snapshot()["accuracy"][0]
    assert figure["model_version"] == 1
    assert figure["mae_by_step"] == [float(h) for h in range(1, H + 1)]
    assert figure["mae"] == pytest.approx(np.mean(range(1, H + 1)), abs=1e-12)
    assert figure["n_by_step"] == [10] * H  # the window holds the last 10 errors per step
    # Ten more origins of a model that is 1 worse: the window now holds only those errors.
    events, records = persistence_batch(project, "a", 60, 70 + H, bias=1.0)
    monitor.on_batch(events, [], records)
    figure = monitor.snapshot()["accuracy"][0]
    assert figure["mae_by_step"] == [float(h + 1) for h in range(1, H + 1)]


def test_the_stream_processors_forecasts_join_their_actuals_exactly(stream_project, tmp_path) -> None:
    project = stream_project(monitoring={"accuracy_window": 1000}, stream={"batch_size": 100})
    events = synthetic_events(project, 100)
    monitor = StreamMonitor(project, persist=False)
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'events.jsonl', events)}", monitor=monitor)
    predictions = read_jsonl(project.root / ".tsops" / "predictions.jsonl")
    assert len(predictions) == len(events) and monitor.batches == 5  # micro-batches of 100
    # Independently: every (forecast, step) whose target time has an observation.
    actual = {(e["entity_id"], pd.Timestamp(e["timestamp"])): e["value"] for e in events}
    errors = defaultdict(list)
    for p in predictions:
        for h, (target, value) in enumerate(zip(p["target_times"], p["values"], strict=True), 1):
            if (p["entity"], pd.Timestamp(target)) in actual:
                errors[(p["model_version"], h)].append(
                    abs(value - actual[(p["entity"], pd.Timestamp(target))])
                )
    snapshot = monitor.snapshot()
    [figure] = snapshot["accuracy"]
    version = figure["model_version"]
    expected = [np.mean(errors[(version, h)]) for h in range(1, H + 1)]
    assert np.allclose(figure["mae_by_step"], expected, rtol=0, atol=1e-9)
    assert figure["n_by_step"] == [len(errors[(version, h)]) for h in range(1, H + 1)]
    assert snapshot["counts"]["joined"] == sum(len(v) for v in errors.values())
    assert snapshot["counts"]["unmatched"] == {"no_forecast": 5, "duplicate": 0, "out_of_order": 0}


def test_unknown_duplicate_and_out_of_order_actuals_are_counted_and_logged(tmp_path, caplog) -> None:
    project = bare_project(tmp_path / "p")
    monitor = StreamMonitor(project, persist=False, reference_loader=lambda v: None)
    t0 = pd.Timestamp("2024-06-01")
    _, records = persistence_batch(project, "a", 0, 1)  # one forecast from t0: 0 for every step
    caplog.set_level(logging.INFO, logger="tsops.monitoring")
    monitor.on_batch([], [], [*records, {"entity": "a", "values": "not a forecast"}])
    at = [Event("a", t0 + pd.Timedelta(hours=k), v) for k, v in ((2, 2.0), (1, 1.0), (1, 5.0), (2, 9.0))]
    monitor.on_batch([*at, Event("nobody", t0, 1.0)], [], [])
    counts = monitor.snapshot()["counts"]
    # t0+2h joins step 2; the late t0+1h still finds its pending forecast (step 1); the second
    # t0+1h and t0+2h find nothing left to join.
    assert counts["joined"] == 2
    assert counts["out_of_order"] == 2
    assert counts["unmatched"] == {"no_forecast": 1, "duplicate": 1, "out_of_order": 1}
    assert counts["invalid_forecasts"] == 1
    assert monitor.snapshot()["accuracy"][0]["mae_by_step"][:2] == [1.0, 2.0]
    assert "out_of_order 1" in caplog.text and "duplicate 1" in caplog.text
    assert "unreadable prediction record" in caplog.text
    assert monitor.errors == 0


def test_online_coverage_per_version_and_step_matches_the_known_noise(tmp_path) -> None:
    """Actuals are a known mean plus Gaussian noise (σ 2). Version 1 forecasts the mean with
    intervals of ± z·σ, so it covers 80 % and 95 %; version 2's intervals are half as wide,
    so they cover 2Φ(z/2) − 1: 47.8 % and 67.1 %. Records without intervals add no coverage."""
    sigma, n = 2.0, 1500
    project = bare_project(tmp_path / "p", monitoring={"accuracy_window": n})
    registry_ = CollectorRegistry()
    history = MonitorHistory(f"sqlite:///{tmp_path / 'monitoring.db'}")
    monitor = StreamMonitor(project, registry=registry_, history=history, reference_loader=lambda v: None)
    rng = np.random.default_rng(7)
    t0 = pd.Timestamp("2024-06-01")
    mean = lambda k: 50.0 + 10.0 * np.sin(2 * np.pi * np.asarray(k) / 24)  # noqa: E731
    events = [
        Event("a", t0 + pd.Timedelta(hours=k), float(mean(k) + rng.normal(0, sigma))) for k in range(n + H)
    ]
    targets = np.arange(n)[:, None] + np.arange(1, H + 1)[None, :]
    yhat = mean(targets)
    z = {"80": 1.2815516, "95": 1.9599640}
    for version, shrink in ((1, 1.0), (2, 0.5)):
        intervals = {lv: (yhat - shrink * q * sigma, yhat + shrink * q * sigma) for lv, q in z.items()}
        records = prediction_records(
            events[:n],
            yhat,
            series=project.settings.series,
            model="m",
            version=version,
            latencies_ms=[0.0] * n,
            intervals=intervals,
        )
        monitor.on_batch([], [], records)
    bare = prediction_records(
        events[:n], yhat, series=project.settings.series, model="m", version=3, latencies_ms=[0.0] * n
    )
    monitor.on_batch(events, [], bare)
    figures = {f["model_version"]: f for f in monitor.snapshot()["accuracy"]}
    wanted = {1: {"80": 0.80, "95": 0.95}, 2: {"80": 0.478, "95": 0.671}}
    for version, levels in wanted.items():
        coverage = figures[version]["coverage"]
        assert set(coverage) == {"80", "95"}
        for level, share in levels.items():
            assert coverage[level]["value"] == pytest.approx(share, abs=0.03), (version, level)
            assert coverage[level]["n_by_step"] == [n] * H
            assert all(abs(x - share) < 0.05 for x in coverage[level]["by_step"]), (version, level)
    assert figures[3]["coverage"] == {} and figures[3]["n"] == n  # MAE, but no bounds to cover
    text = generate_latest(registry_).decode()
    got = figures[2]["coverage"]["95"]
    assert f'tsops_online_coverage{{level="95",model_version="2",step="all"}} {got["value"]}' in text
    assert f'tsops_online_coverage{{level="80",model_version="1",step="{H}"}}' in text
    assert monitor.persist() > 0
    stored = {(r.model_version, r.level, r.step): r for r in history.latest_coverage()}
    assert stored[(2, "95", ALL_STEPS)].coverage == pytest.approx(got["value"])
    assert stored[(1, "80", 3)].coverage == pytest.approx(figures[1]["coverage"]["80"]["by_step"][2])
    assert stored[(1, "80", 3)].n == n
    assert not any(v == 3 for v, _, _ in stored)
    monitor.close()


def test_status_goes_on_without_online_figures_when_the_monitoring_database_is_unreachable(
    tmp_path, caplog
) -> None:
    from tsops.status import online

    assert online(bare_project(tmp_path / "fresh")) == {}  # no stream yet: nothing read, nothing created
    assert not (tmp_path / "fresh" / ".tsops" / "monitoring.db").exists()
    port = free_port()  # nothing listens there
    project = bare_project(tmp_path / "p", monitoring={"database": f"postgresql://nobody@127.0.0.1:{port}/x"})
    caplog.set_level(logging.WARNING, logger="tsops.status")
    assert online(project) == {}
    assert "monitoring database cannot be read" in caplog.text


def test_pending_forecasts_stay_bounded_and_unjoined_steps_expire(tmp_path) -> None:
    project = bare_project(tmp_path / "p")
    monitor = StreamMonitor(project, persist=False, reference_loader=lambda v: None)
    most = 0
    for start in range(0, 1000, 100):
        batch_events, batch_records = [], []
        for entity in ("a", "b", "c"):
            events, records = persistence_batch(project, entity, start, start + 100)
            batch_events += [e for e in events if e.time.hour != 5]  # a gap every day: never joined
            batch_records += records
        monitor.on_batch(batch_events, [], batch_records)
        most = max(most, monitor.snapshot()["counts"]["pending_forecasts"])
    counts = monitor.snapshot()["counts"]
    # Forecasts live until their last target is a horizon older than the entity's latest actual.
    assert most <= 3 * (100 + 2 * H)
    assert counts["pending_forecasts"] <= 3 * (2 * H + 1)
    # Every missing hour whose forecasts have all expired lost one step of each of H forecasts.
    gone = [k for k in range(1000) if k % 24 == 5 and k + H < 999 - 2 * H]
    assert counts["expired_steps"] >= 3 * H * len(gone)
    assert counts["unmatched"]["no_forecast"] == 3


def test_replays_join_nothing_twice_while_pending_forecasts_are_dropped_and_squeezed_out(tmp_path) -> None:
    # One step per micro-batch, each batch replayed once: the pending arrays grow, drop done
    # forecasts and reuse their rows many times; every (forecast, step) still joins exactly once.
    project = bare_project(tmp_path / "p")
    monitor = StreamMonitor(project, persist=False, reference_loader=lambda v: None)
    entities, steps = ("a", "b", "c", "d"), 12 * H
    for k in range(steps):
        events, records = [], []
        for entity in entities:
            e, r = persistence_batch(project, entity, k, k + 1)
            events += e
            records += r
        monitor.on_batch(events, [], records)
        monitor.on_batch(events, [], records)  # a replay: duplicates, the same forecasts
    counts = monitor.snapshot()["counts"]
    joinable = sum(min(H, steps - 1 - origin) for origin in range(steps))
    assert counts["joined"] == len(entities) * joinable
    assert counts["expired_steps"] == 0
    # The last H forecasts of each entity wait for actuals; the H + 1 before them are done
    # (every step joined) and kept as keys only, so that their replays are told apart.
    assert counts["pending_forecasts"] == len(entities) * H
    assert len(monitor.accuracy.pending[1].done_keys) == len(entities) * (H + 1)
    figure = monitor.snapshot()["accuracy"][0]
    assert figure["mae_by_step"] == [float(h) for h in range(1, H + 1)]
    assert counts["unmatched"]["duplicate"] == steps * len(entities)


def test_a_replayed_window_of_done_forecasts_joins_nothing_again(tmp_path) -> None:
    # A worker restarted from an older checkpoint replays forecasts whose every step has
    # joined (their values are gone, their keys kept) and their actuals: nothing joins twice.
    project = bare_project(tmp_path / "p")
    monitor = StreamMonitor(project, persist=False, reference_loader=lambda v: None)
    events, records = persistence_batch(project, "a", 0, 5 * H)
    monitor.on_batch(events, [], records)
    before = monitor.snapshot()["counts"]
    assert before["joined"] == sum(min(H, 5 * H - 1 - origin) for origin in range(5 * H))
    replayed = slice(3 * H, 4 * H)  # done forecasts (not yet expired) and their actuals
    monitor.on_batch(events[replayed], [], records[replayed])
    after = monitor.snapshot()["counts"]
    assert after["joined"] == before["joined"]
    assert after["pending_forecasts"] == before["pending_forecasts"] == H
    assert after["unmatched"]["out_of_order"] == H
    assert monitor.snapshot()["accuracy"][0]["mae_by_step"] == [float(h) for h in range(1, H + 1)]


def test_prometheus_metrics_carry_the_rolling_mae_by_version_and_step(tmp_path) -> None:
    project = bare_project(tmp_path / "p")
    prom = CollectorRegistry()
    monitor = StreamMonitor(project, registry=prom, persist=False, reference_loader=lambda v: None)
    events, records = persistence_batch(project, "a", 0, 60, version=3)
    monitor.on_batch(events, [], records)
    assert prom.get_sample_value("tsops_online_mae", {"model_version": "3", "step": "5"}) == 5.0
    assert prom.get_sample_value("tsops_online_mae", {"model_version": "3", "step": "all"}) == pytest.approx(
        12.5
    )
    assert prom.get_sample_value("tsops_accuracy_unmatched_actuals_total", {"reason": "no_forecast"}) == 1
    assert prom.get_sample_value("tsops_accuracy_joined_total", {"model_version": "3"}) == sum(
        60 - h for h in range(1, H + 1)
    )
    text = generate_latest(prom).decode()
    assert 'tsops_online_mae_samples{model_version="3",step="24"}' in text


def drifted_events(project, steps: int, level_shift: float) -> list[Event]:  # type: ignore[no-untyped-def]
    syn = project.settings.data.synthetic
    start = pd.Timestamp(syn.start) + pd.Timedelta(hours=syn.periods)
    spec = SyntheticSpec(
        entities=syn.entities,
        start=syn.start,
        periods=syn.periods,
        seed=syn.seed,
        drift=DriftSpec(at=start, level_shift=level_shift),
    )
    frame = generate_range(spec, syn.periods, syn.periods + steps).sort_values(["timestamp", "entity_id"])
    return [Event(e, t, float(v)) for e, t, v in frame.itertuples(index=False)]


def test_drift_is_near_zero_on_reference_like_data_and_high_after_a_level_shift(stream_model) -> None:
    project = stream_model
    champion = registry.version_for_alias(registry.connect(project), "synthetic", registry.CHAMPION)
    scores = {}
    for shift in (0.0, 1.0):
        events = drifted_events(project, 200, shift)  # 1000 observations: the default window
        history = pd.read_parquet(project.data_path)
        frame = pd.DataFrame([(e.entity, e.time, e.value) for e in events], columns=history.columns)
        features = FeatureSet(project.settings.features)
        full = batch_features(
            pd.concat([history, frame]).sort_values(["entity_id", "timestamp"]).reset_index(drop=True),
            features,
            entity="entity_id",
            time="timestamp",
            target="value",
        )
        rows = full[full["timestamp"] >= frame["timestamp"].min()][features.names].to_dict("records")
        monitor = StreamMonitor(project, persist=False, reference_version=champion)
        monitor.on_batch(events, rows, [])
        drift = monitor.snapshot()["drift"]
        assert drift["reference_version"] == champion and drift["rows"] == 1000
        assert set(drift["scores"]) == {
            "value",
            "lag_168",
            "roll_mean_24",
            "roll_std_24",
            "roll_mean_168",
            "roll_std_168",
        }
        scores[shift] = drift["scores"]["value"]["score"]
    assert scores[0.0] < 0.1  # sampling noise alone is about (bins - 1) / n = 0.009
    assert scores[1.0] > 0.25  # a level shift of one seasonal amplitude


def test_snapshots_are_stored_and_tsops_monitor_shows_them(stream_project, tmp_path) -> None:
    project = stream_project(monitoring={"snapshot_interval_s": 0}, stream={"batch_size": 500})
    monitor = StreamMonitor(project)
    events = synthetic_events(project, 120)
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', events)}", monitor=monitor)
    snapshot = monitor.snapshot()
    monitor.close()
    [figure] = snapshot["accuracy"]
    history = MonitorHistory.for_project(project)
    overall = history.accuracy(step=ALL_STEPS)
    assert len(overall) == 2  # two micro-batches of 500 events (600 events), one row each
    assert overall[-1].mae == pytest.approx(figure["mae"]) and overall[-1].n == figure["n"]
    assert overall[-1].event_time == pd.Timestamp(snapshot["event_time"]).to_pydatetime()
    assert {r.feature for r in history.latest_drift()} == set(snapshot["drift"]["scores"])
    result = run_cli("monitor", "--project", str(project.root), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    [version] = shown["accuracy"]
    assert version["model_version"] == figure["model_version"] and "champion" in version["aliases"]
    assert version["mae"] == pytest.approx(figure["mae"])
    assert [s["mae"] for s in version["by_step"]] == pytest.approx(figure["mae_by_step"])
    assert version["backtest_mae"] > 0
    assert {d["feature"] for d in shown["drift"]} == set(snapshot["drift"]["scores"])
    # The stream's records carry the champion's intervals: their online coverage is stored too.
    assert set(version["coverage"]) == {"80", "95"} == set(figure["coverage"])
    assert version["coverage"]["80"]["coverage"] == pytest.approx(figure["coverage"]["80"]["value"])
    assert len(version["coverage"]["95"]["by_step"]) == len(figure["mae_by_step"])
    text = run_cli("monitor", "--project", str(project.root), env={"COLUMNS": "200"})
    assert text.returncode == 0 and "online accuracy" in text.stdout and "roll_std_24" in text.stdout
    assert "80%: " in text.stdout
    status = run_cli("status", "--project", str(project.root), "--json")
    assert status.returncode == 0, status.stderr
    [live] = [
        m["online"] for m in json.loads(status.stdout)["models"] if m["version"] == figure["model_version"]
    ]
    assert live["mae"] == pytest.approx(figure["mae"])
    assert live["coverage"]["95"]["coverage"] == pytest.approx(figure["coverage"]["95"]["value"])


def test_report_writes_evidently_html_and_logs_it_to_the_champions_run(stream_project, tmp_path) -> None:
    from tsops.monitoring.report import write_report

    project = stream_project(monitoring={"report_window": 100})
    events = [
        {"entity_id": e.entity, "timestamp": e.time.isoformat(), "value": e.value}
        for e in drifted_events(project, 100, 2.0)
    ]
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', events)}")
    out = write_report(project, tmp_path / "drift.html")
    html = out.path.read_text()
    assert html.lstrip().startswith("<!DOCTYPE html>") and "Drifted Columns" in html
    client = registry.connect(project)
    assert out.run_id == client.get_model_version("synthetic", str(out.version)).run_id
    logged = [a.path for a in client.list_artifacts(out.run_id, "monitoring")]
    assert "monitoring/drift.html" in logged
    assert out.current_rows == 5 * 100
    assert out.scores["value"] > 0.25  # Evidently's own PSI sees the shifted level too


def test_gauges_catch_up_with_batches_accounted_between_refreshes(tmp_path) -> None:
    """Micro-batches only accumulate; the gauges follow at the next refresh (or a read)."""
    project = bare_project(tmp_path / "p")
    prom = CollectorRegistry()
    monitor = StreamMonitor(project, registry=prom, persist=False, reference_loader=lambda v: None)
    for start in range(0, 60, 10):  # six batches well within one refresh interval
        events, records = persistence_batch(project, "a", start, start + 10, version=3)
        monitor.on_batch(events, [], records)
    expected_mae = monitor.accuracy.figures()[0]["mae"]
    joined = monitor.accuracy.figures()[0]["errors_total"]
    monitor.refresh()
    assert prom.get_sample_value("tsops_online_mae", {"model_version": "3", "step": "all"}) == pytest.approx(
        expected_mae
    )
    assert prom.get_sample_value("tsops_accuracy_joined_total", {"model_version": "3"}) == joined


def test_latest_earlier_actual_per_entity_matches_a_grouped_running_max() -> None:
    """`_earlier_max` (numpy) equals pandas' grouped cummax shifted by one, on random batches."""
    from tsops.monitoring.accuracy import _NO_TIME, _earlier_max

    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 100, 5000):
        codes = rng.integers(0, 13, n)
        steps = rng.integers(480_000, 480_300, n)
        grouped = pd.Series(steps).groupby(codes).cummax().groupby(codes).shift(1)
        expected = grouped.fillna(_NO_TIME).to_numpy(np.int64)
        assert np.array_equal(_earlier_max(codes, steps), expected)


def test_rolling_errors_keep_each_steps_last_window_errors():
    """The ring buffers against the plainest definition: one deque of the last `window`
    errors per horizon step, fed error by error in arrival order."""
    from collections import deque

    from tsops.monitoring.accuracy import RollingErrors

    rng = np.random.default_rng(3)
    horizon, window = 6, 7
    rolling = RollingErrors(horizon, window)
    oracle = [deque(maxlen=window) for _ in range(horizon)]
    for size in [0, 1, 5, 30, 3, 50, 2, 17]:  # batches smaller and larger than the window
        steps = rng.integers(1, horizon + 1, size)
        errors = rng.random(size)
        rolling.add(steps, errors)
        for h, e in zip(steps, errors, strict=True):
            oracle[h - 1].append(e)
        want = [np.mean(q) if q else np.nan for q in oracle]
        np.testing.assert_allclose(rolling.mae_by_step(), want, rtol=1e-12)
        assert rolling.count.tolist() == [len(q) for q in oracle]
    assert rolling.total == 108


def test_tsops_monitor_says_what_each_figure_rests_on_and_flags_too_few(stream_project, tmp_path) -> None:
    project = stream_project(monitoring={"snapshot_interval_s": 0})
    events = synthetic_events(project, 3)  # 3 steps × 5 entities: far too few for any figure
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', events)}")
    shown = json.loads(run_cli("monitor", "--project", str(project.root), "--json").stdout)
    [version] = shown["accuracy"]
    assert version["steps_with_errors"] == 2 and version["horizon"] == project.settings.model.horizon
    assert version["errors"] == sum(s["n"] for s in version["by_step"]) == 15  # 2 + 1 actuals × 5
    assert version["fewest_errors_per_step"] == 0 and version["enough"] is False
    assert shown["drift"] and all(d["n"] == 15 and d["enough"] is False for d in shown["drift"])

    text = run_cli("monitor", "--project", str(project.root), env={"COLUMNS": "250"}).stdout
    assert f"15 over 2/{project.settings.model.horizon} steps" in text
    assert text.count("(few)") == 1 + len(shown["drift"])
    assert f"few: the figure rests on fewer than {shown['min_errors_per_step']} errors" in text
    last_event = max(e["timestamp"] for e in events)[:19].replace("T", " ")
    assert last_event in text.replace("T", " ")  # the data's event time, labelled as such
    assert "snapshot taken at" in text and "(wall clock, UTC)" in text


def test_workers_starting_together_on_a_fresh_monitoring_database_all_start(tmp_path) -> None:
    """Two stream workers started at once both create the history tables: neither may fail
    with "table already exists" (it once ended a worker of a pair at start-up)."""
    import threading

    def open_history(url: str, start: threading.Barrier, failures: list[str]) -> None:
        start.wait()
        try:
            MonitorHistory(url)
        except Exception as e:  # every failure is the finding
            failures.append(str(e).splitlines()[0])

    for round_ in range(4):
        url = f"sqlite:///{tmp_path / f'monitoring-{round_}.db'}"
        start, failures = threading.Barrier(6), []
        threads = [threading.Thread(target=open_history, args=(url, start, failures)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert MonitorHistory(url).accuracy() == []


def test_the_join_equals_a_plain_dictionary_join_on_a_shuffled_replayed_stream() -> None:
    """The columnar tracker (reused rows, done forecasts kept as keys, expiry) against the
    rule written plainly: per micro-batch, forecasts first (a known key is skipped), then each
    actual in order joins every not yet joined (forecast, step) whose target it is; a forecast
    with every step joined is kept as its key only; both are forgotten a horizon after their
    last target. Random order within batches, gaps, duplicates, replayed batches, two versions."""
    from tsops.monitoring.accuracy import AccuracyTracker

    horizon, window, t0 = 4, 7, pd.Timestamp("2024-06-01")
    rng = np.random.default_rng(3)
    tracker = AccuracyTracker(horizon, pd.Timedelta("1h"), window)
    pending: dict[tuple[int, str, int], tuple[np.ndarray, np.ndarray]] = {}
    done: set[tuple[int, str, int]] = set()
    latest: dict[str, int] = {}
    errors: dict[tuple[int, int], list[float]] = defaultdict(list)
    joined = expired = 0
    batches: list[tuple[list[Event], list[dict]]] = []
    for k in range(0, 400, 4):
        events, records = [], []
        for entity in ("a", "b", "c"):
            for step in range(k, k + 4):
                value = float(rng.normal(step, 3))
                if rng.random() > 0.1:  # a gap: never observed
                    events.append(Event(entity, t0 + pd.Timedelta(hours=step), value))
                records.append(
                    {"entity": entity, "event_time": (t0 + pd.Timedelta(hours=step)).isoformat(),
                     "model_version": 1 + (k // 40) % 2, "values": list(rng.normal(step, 3, horizon))}
                )  # fmt: skip
        shuffled = rng.permutation(len(events))
        events = [events[i] for i in shuffled]
        if rng.random() < 0.2:
            events.append(events[0])  # a duplicate in the batch
        batches.append((events, records))
        replay = rng.random() < 0.25 and len(batches) > 3
        for events, records in [batches[-1], *([batches[-1 - int(rng.integers(1, 4))]] if replay else [])]:
            tracker.add_forecasts(records)  # type: ignore[arg-type]
            tracker.add_actuals(events)
            for r in records:  # the rule, plainly
                step = int((pd.Timestamp(r["event_time"]) - t0) / pd.Timedelta("1h"))
                key = (r["model_version"], r["entity"], step)
                if key not in pending and key not in done:
                    pending[key] = (np.array(r["values"]), np.zeros(horizon, bool))
            for e in events:
                step = int((e.time - t0) / pd.Timedelta("1h"))
                for version in (1, 2):
                    for h in range(1, horizon + 1):
                        found = pending.get((version, e.entity, step - h))
                        if found is not None and not found[1][h - 1]:
                            found[1][h - 1] = True
                            errors[(version, h)].append(abs(found[0][h - 1] - e.value))
                            joined += 1
            for key in [key for key, (_, flags) in pending.items() if flags.all()]:
                del pending[key]
                done.add(key)
            for e in events:
                latest[e.entity] = max(
                    latest.get(e.entity, -(2**40)), int((e.time - t0) / pd.Timedelta("1h"))
                )
            for key in [key for key in pending if key[2] < latest.get(key[1], -(2**40)) - 2 * horizon]:
                expired += int((~pending.pop(key)[1]).sum())
            done = {key for key in done if key[2] >= latest.get(key[1], -(2**40)) - 2 * horizon}
    assert tracker.counts.joined == joined > 0
    assert tracker.counts.expired_steps == expired > 0
    assert tracker.pending_count == len(pending)
    assert sum(len(p.done_keys) for p in tracker.pending.values()) == len(done)
    for figure in tracker.figures():
        version = figure["model_version"]
        expected = [np.mean(errors[(version, h)][-window:]) for h in range(1, horizon + 1)]
        assert np.allclose(figure["mae_by_step"], expected, rtol=0, atol=1e-12)


def test_interval_bounds_kept_as_float32_always_hold_the_forecasts_interval() -> None:
    """The pending bounds are float32 rounded outward: never inside the float64 bound, at
    most one float32 step away; beyond float32's range a bound becomes the largest float32
    on the outward side or an infinity, never a narrower interval."""
    from tsops.monitoring.accuracy import _outward

    rng = np.random.default_rng(5)
    bounds = np.concatenate([rng.normal(0, 1, 10_000) * 10.0 ** rng.integers(-30, 30, 10_000),
                             [0.0, np.nan, 1e39, -1e39, 5e-324]])  # fmt: skip
    lower, upper = _outward(bounds, -1), _outward(bounds, 1)
    assert lower.dtype == upper.dtype == np.float32
    finite = np.isfinite(bounds)
    assert (lower[finite] <= bounds[finite]).all() and (upper[finite] >= bounds[finite]).all()
    assert np.isnan(lower[~finite]).all() and np.isnan(upper[~finite]).all()
    small = finite & (np.abs(bounds) < 1e38)
    step = np.spacing(np.abs(bounds[small]).astype(np.float32))
    assert (bounds[small] - lower[small] <= step).all() and (upper[small] - bounds[small] <= step).all()
