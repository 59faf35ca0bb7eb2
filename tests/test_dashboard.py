"""The live dashboard: `tsops serve` (its own process) serves it at `/`; headless Chromium
watches the chart follow stream events written by another process, without a reload. The
feed's readers are incremental and read monitoring, decisions and worker metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from conftest import TSOPS, synthetic_events, write_jsonl, write_synthetic_project
from servers import ServerStartError, free_port, wait_for_http
from tsops.settings import Project
from tsops.streaming.runner import run_stream
from tsops.ui.feed import DashboardFeed
from tsops.ui.tails import JsonlTail

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_DOC = REPO / "docs" / "img" / "dashboard.png"


@pytest.fixture(scope="module")
def dashboard_project(stream_model, tmp_path_factory):  # type: ignore[no-untyped-def]
    """An ingested copy of the small synthetic project using `stream_model`'s champion."""
    from tsops.features.ingest import ingest

    root = tmp_path_factory.mktemp("dashboard") / "proj"
    project = write_synthetic_project(root, tracking_uri=stream_model.tracking_uri)
    ingest(project, quiet=True)
    return project


@pytest.fixture(scope="module")
def served(dashboard_project, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """`tsops serve` for the project, in its own process: its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*TSOPS, "serve", "--project", str(dashboard_project.root), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http("tsops serve", f"{url}/ping", proc, log_path.read_text)
    except ServerStartError as e:
        pytest.fail(str(e), pytrace=False)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"tsops serve did not stop on SIGTERM:\n{log_path.read_text()[-3000:]}")


@pytest.fixture()
def page() -> Iterator[Page]:
    """A page of Debian's headless Chromium (no browser download)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1600, "height": 1200})
        finally:
            browser.close()


def chart(page: Page) -> dict[str, int]:
    data = page.eval_on_selector("#main-chart", "e => ({...e.dataset})")
    return {
        "actuals": int(data["actualPoints"]),
        "forecasts": int(data["forecastPoints"]),
        "last_actual": int(data.get("lastActual") or 0),
    }


def wait_for_chart(page: Page, condition: str, timeout_s: float = 60) -> None:
    """Wait until the main chart's data attributes (d) satisfy a JavaScript condition."""
    page.wait_for_function(
        f"() => {{ const d = document.querySelector('#main-chart').dataset; return {condition}; }}",
        timeout=timeout_s * 1000,
    )


def stream_batch(project: Project, tmp_path: Path, name: str, steps: int, start: int) -> None:
    """Events of the synthetic series continued from step `start`, through the stream processor."""
    events = synthetic_events(project, steps, start=start)
    summary = run_stream(project, source=f"file:{write_jsonl(tmp_path / name, events)}")
    assert summary.predictions == len(events)


def test_chart_follows_stream_events_without_a_reload(served, dashboard_project, page, tmp_path) -> None:  # type: ignore[no-untyped-def]
    project = dashboard_project
    periods = project.settings.data.synthetic.periods
    page.goto(served)
    wait_for_chart(page, "Number(d.actualPoints) > 0")  # the history's latest steps, from the offline store
    before = chart(page)
    assert before["forecasts"] == 0
    # nothing has been monitored yet: an explicit empty state, not a broken chart
    assert "No online accuracy yet" in page.inner_text("#accuracy-chart")
    page.evaluate("window.__sameDocument = true")

    stream_batch(project, tmp_path, "first.jsonl", 24, periods)
    wait_for_chart(page, f"Number(d.forecastPoints) > 0 && Number(d.lastActual) > {before['last_actual']}")
    first = chart(page)

    with httpx.Client(base_url=served, timeout=10) as client:  # traffic for the latency panel
        for i in range(40):
            assert client.get(f"/forecast/e00{i % 5}").status_code == 200
    stream_batch(project, tmp_path, "second.jsonl", 24, periods + 24)
    wait_for_chart(
        page,
        f"Number(d.forecastPoints) > {first['forecasts']} && Number(d.lastActual) > {first['last_actual']}",
    )
    second = chart(page)
    assert second["last_actual"] - first["last_actual"] == 24 * 3600 * 1000  # 24 more hourly steps
    assert page.evaluate("window.__sameDocument") is True  # updated in place, never reloaded

    # the fan's band is the latest forecast's 80 and 95 % intervals, as its prediction record has them
    entity = page.eval_on_selector("#main-chart", "e => e.dataset.entity")
    records = [
        json.loads(x) for x in (project.root / ".tsops" / "predictions.jsonl").read_text().splitlines()
    ]
    latest = max((r for r in records if r["entity"] == entity), key=lambda r: r["event_time"])
    with httpx.Client(base_url=served, timeout=10) as client:
        shown = client.get(f"/ui/entity/{entity}").json()
    assert set(shown["intervals"]) == {"80", "95"} and shown["band"] is None
    for level, band in latest["intervals"].items():
        assert [p[1] for p in shown["intervals"][level]] == pytest.approx(band["lower"], abs=1e-5)
        assert [p[2] for p in shown["intervals"][level]] == pytest.approx(band["upper"], abs=1e-5)
        assert [p[0] for p in shown["intervals"][level]] == [p[0] for p in shown["fan"][-1]["points"]]
    assert page.eval_on_selector("#main-chart", "e => e.dataset.intervalLevels") == "80,95"
    assert "80 % prediction interval" in page.inner_text("#main-legend")
    # the backtest card: the champion's LSTM beside every baseline, with the ratio to the best
    page.wait_for_selector("#backtest table")
    table = page.inner_text("#backtest")
    assert "lstm" in table and "seasonal_naive" in table and "mstl" in table and "best baseline" in table
    assert "90% of resampled origins give" in table
    assert "its network corrects the " in table and " alone" in table  # what the LSTM's network corrects

    # the requests' latency is plotted (from the server's own metrics, over a 10 s window)
    page.wait_for_function("document.querySelectorAll('#latency-chart path').length > 0", timeout=15_000)
    page.wait_for_timeout(500)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("TSOPS_SAVE_SCREENSHOT") == "1":
        SCREENSHOT_DOC.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT_DOC)


def test_event_stream_pushes_an_update_when_a_dead_letter_arrives(served, dashboard_project) -> None:  # type: ignore[no-untyped-def]
    dead = dashboard_project.state_dir / "dead_letters.jsonl"
    with httpx.Client(base_url=served, timeout=30) as client:
        with client.stream("GET", "/ui/events", params={"entity": "e001"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            updates = _updates(response.iter_lines())
            first = next(updates)
            assert first["selected"] == "e001" and first["entity"]["entity"] == "e001"
            total = first["overview"]["dead_letters"]["total"]
            letter = {"error": "invalid_json", "detail": "not JSON", "where": None, "payload": "{"}
            with dead.open("a") as f:
                f.write(json.dumps(letter) + "\n")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if next(updates)["overview"]["dead_letters"]["total"] == total + 1:
                    break
            else:
                pytest.fail("no update carried the new dead letter")


def _updates(lines: Iterator[str]) -> Iterator[dict]:  # type: ignore[type-arg]
    event = None
    for line in lines:
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "update":
            yield json.loads(line[5:])


def test_dashboard_work_starts_with_the_first_viewer_and_stops_with_the_server(dashboard_project) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from tsops.serving.app import create_app

    app = create_app(dashboard_project, watch=False)
    with TestClient(app) as client:
        feed = app.state.dashboard
        assert client.get("/forecast/e000").status_code == 200
        assert not feed.running and feed.refreshed_at is None  # serving alone reads nothing for it
        assert "e000" in client.get("/ui/entities").json()["entities"]
        assert feed.running
    assert not feed.running


def test_unknown_entity_gets_a_404_in_the_error_format(served) -> None:  # type: ignore[no-untyped-def]
    answer = httpx.get(f"{served}/ui/entity/atlantis", timeout=10)
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found" and answer.json()["where"] == "entity"


def test_page_and_event_stream_are_not_in_the_openapi_schema(served) -> None:  # type: ignore[no-untyped-def]
    paths = httpx.get(f"{served}/openapi.json", timeout=10).json()["paths"]
    assert "/ui/overview" in paths and "/ui/entity/{entity}" in paths
    assert "/" not in paths and "/ui/events" not in paths


def test_jsonl_tail_reads_only_what_was_appended(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "predictions.jsonl"
    tail = JsonlTail(path)
    assert tail.read().records == []  # not there yet
    path.write_text('{"n": 1}\n{"n": 2}\n{"n": ')  # a writer mid-append
    assert [r["n"] for r in tail.read().records] == [1, 2]
    assert tail.offset == path.stat().st_size  # the next read starts where this one ended
    with path.open("a") as f:
        f.write('3}\nnot json\n{"n": 4}\n')
    lines = tail.read()
    assert [r["n"] for r in lines.records] == [3, 4] and lines.bad == 1 and not lines.reset
    assert tail.read().records == []
    replacement = tmp_path / "new.jsonl"
    replacement.write_text('{"n": 5}\n')
    os.replace(replacement, path)  # rotated: start over on the new file
    lines = tail.read()
    assert lines.reset and [r["n"] for r in lines.records] == [5]


def test_a_first_read_of_a_large_file_starts_near_its_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"n": i, "pad": "x" * 80}) + "\n" for i in range(10_000)))
    records = JsonlTail(path, initial_bytes=10_000).read().records
    assert 50 < len(records) < 120 and records[-1]["n"] == 9_999
    assert [r["n"] for r in records] == list(range(records[0]["n"], 10_000))  # whole lines only


def test_accuracy_drift_and_decisions_come_from_their_stores(stream_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    from tsops.monitoring.history import ALL_STEPS, AccuracyRow, DriftRow, MonitorHistory

    project = write_synthetic_project(tmp_path / "proj", tracking_uri=stream_model.tracking_uri)
    feed = DashboardFeed(project)
    feed.refresh()
    empty = feed.overview()
    assert not empty["accuracy"]["available"] and "no monitoring history yet" in empty["accuracy"]["reason"]
    assert not (project.state_dir / "monitoring.db").exists()  # the dashboard never creates it

    history = MonitorHistory.for_project(project)
    now = datetime.now(UTC).replace(tzinfo=None)
    for k, at in enumerate([now - timedelta(minutes=2), now - timedelta(minutes=1)]):
        steps = [AccuracyRow(at, None, 1, h, 1.0 + h / 10 + k, 300) for h in range(1, 25)]
        history.write(
            [AccuracyRow(at, None, 1, ALL_STEPS, 2.0 + k, 300), *steps],
            [DriftRow(at, None, 1, "value", 0.05 + 0.3 * k, 1000)],
        )
    history.close()
    feed.close()
    feed = DashboardFeed(project)
    feed.refresh()
    overview = feed.overview()
    accuracy = overview["accuracy"]
    assert accuracy["available"] and [p[2] for p in accuracy["series"][0]["points"]] == [2.0, 3.0]
    assert accuracy["by_step"]["1"][0] == pytest.approx(2.1) and len(accuracy["by_step"]["1"]) == 24
    drift = overview["drift"]["series"]
    assert drift[0]["feature"] == "value" and [round(p[1], 2) for p in drift[0]["points"]] == [0.05, 0.35]
    decisions = overview["models"]["decisions"]
    assert decisions["available"] and decisions["items"][0]["kind"] == "promote"
    assert overview["models"]["moves"][0]["version"] == 1
    feed.close()


def test_backtest_table_shows_the_lstm_beside_every_baseline_with_the_ratio_to_the_best(stream_model) -> None:  # type: ignore[no-untyped-def]
    from tsops import registry

    feed = DashboardFeed(stream_model)
    feed.refresh()
    models = feed.overview()["models"]
    [champion] = [v for v in models["versions"] if v["version"] == models["champion"]]
    run = registry.connect(stream_model).get_run(
        registry.connect(stream_model)
        .get_model_version(stream_model.settings.model.name, str(models["champion"]))
        .run_id
    )
    metrics = run.data.metrics
    baselines = {k[: -len("_mae")] for k in metrics if k.endswith("_mae")} - {"lstm", "val"}
    assert {"persistence", "seasonal_naive", "autoets", "autotheta", "mstl"} <= baselines
    shown = {r["model"]: r for r in champion["backtest"]}
    assert set(shown) == baselines | {"lstm"}
    best = min(baselines, key=lambda b: metrics[f"{b}_mae"])
    assert champion["best_baseline"] == best
    assert [r["mae"] for r in champion["backtest"]] == sorted(r["mae"] for r in champion["backtest"])
    for name, row in shown.items():
        assert row["mae"] == metrics[f"{name}_mae"]
        assert row["vs_best_baseline"] == pytest.approx(metrics[f"{name}_mae"] / metrics[f"{best}_mae"])
    assert shown[best]["vs_best_baseline"] == 1.0
    assert champion["lstm_vs_best_baseline"] == pytest.approx(shown["lstm"]["vs_best_baseline"])
    assert champion["beats_best_baseline"] == (shown["lstm"]["vs_best_baseline"] < 1.0)
    low, high = champion["lstm_vs_best_baseline_interval"]  # over resampled origins
    assert [low, high] == [metrics["lstm_vs_best_baseline_low"], metrics["lstm_vs_best_baseline_high"]]
    assert low <= champion["lstm_vs_best_baseline"] <= high
    assert champion["lstm_base"] == run.data.tags["tsops.lstm_base"]
    assert champion["lstm_base_mae"] == float(run.data.tags["tsops.lstm_base_mae"])
    feed.close()


def test_stream_lag_is_read_from_the_worker_metrics(stream_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import start_http_server

    from tsops.streaming.metrics import StreamMetrics

    metrics = StreamMetrics()
    metrics.lag.set(42)
    metrics.events_in.inc(1000)
    metrics.dead_letters.labels("invalid_json").inc(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        project = write_synthetic_project(
            tmp_path / "proj",
            tracking_uri=stream_model.tracking_uri,
            extra={"serving": {"dashboard": {"stream_metrics_url": f"http://127.0.0.1:{port}/metrics"}}},
        )
        feed = DashboardFeed(project)
        feed.refresh()
        time.sleep(0.1)
        feed.refresh()  # rates need two readings
        stream = feed.overview()["stream"]
        assert stream["metrics"]["error"] is None
        assert stream["metrics"]["lag"] == 42 and stream["metrics"]["consumed"] == 1000
        assert stream["metrics"]["dead_letters"] == {"invalid_json": 3.0}
        assert stream["timeline"][-1][5] == 42
        feed.close()
    finally:
        server.shutdown()
        thread.join(timeout=5)
