"""Hot reload and canary/shadow routing, on a registry of its own (a copy of the session's),
so the aliases these tests move do not affect other tests."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from mlflow import MlflowClient

from serving_server import AppServer
from tsops.lifecycle.promotion import promote
from tsops.models.pipeline import train
from tsops.serving.app import create_app
from tsops.settings import Project

TOKEN = "reload-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def versions(weather_project, trained_weather, tmp_path_factory):  # type: ignore[no-untyped-def]
    """(project on its own registry, [v1, v2, v3]): two more quick trainings of the weather
    model with other seeds, so each version forecasts differently. Their backtests leave out
    the statistical baselines (most of a quick training's time): these tests promote by force
    and read forecasts, never a version's backtest metrics."""
    db = tmp_path_factory.mktemp("registry") / "mlflow.db"
    shutil.copy(weather_project.state_dir / "mlflow.db", db)
    s = weather_project.settings
    project = Project(
        weather_project.root,
        s.model_copy(
            update={
                "tracking": s.tracking.model_copy(update={"uri": f"sqlite:///{db}"}),
                "serving": s.serving.model_copy(update={"reload_interval_s": 0.2, "admin_token": TOKEN}),
            }
        ),
    )
    found = [trained_weather.version]
    for seed in (1, 2):
        # One epoch without the weights' moving average (after one epoch the average is still
        # mostly the initial weights, whose correction validation sets to 0 at every step: the
        # versions would all forecast their base).
        cheap = s.model.model_copy(update={"quick_epochs": 1, "seed": seed, "weight_average": 0.0})
        no_baselines = s.backtest.model_copy(update={"baselines": []})
        trained = train(
            Project(
                project.root,
                project.settings.model_copy(update={"model": cheap, "backtest": no_baselines}),
            ),
            quick=True,
            show_progress=False,
        )
        found.append(trained.version)
    return project, found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_promotions_under_load_switch_versions_with_zero_failed_requests(versions) -> None:  # type: ignore[no-untyped-def]
    project, (v1, v2, v3) = versions
    promote(project, v1, force=True)
    server = AppServer(create_app(project)).start()
    seen: list[list[tuple[int, str, tuple[float, ...]]]] = [[], []]
    stop = threading.Event()

    def generate_load(out: list[tuple[int, str, tuple[float, ...]]], path: str) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    answer = client.get(path)
                    values = tuple(p["value"] for p in answer.json()["forecast"]) if answer.is_success else ()
                    out.append((answer.status_code, answer.headers.get("x-model-version", ""), values))
                except httpx.HTTPError as e:
                    out.append((0, repr(e), ()))

    threads = [
        threading.Thread(target=generate_load, args=(seen[0], "/forecast/seattle")),
        threading.Thread(target=generate_load, args=(seen[1], "/forecast/seattle")),
    ]
    for thread in threads:
        thread.start()
    try:
        latest = lambda: seen[0][-1][1] if seen[0] else ""  # noqa: E731
        wait_for(lambda: latest() == str(v1), "the first answers")
        promote(project, v2, force=True)
        wait_for(lambda: latest() == str(v2), f"v{v2} to serve")
        promote(project, v3, force=True)
        wait_for(lambda: latest() == str(v3), f"v{v3} to serve")
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.stop()

    for answers in seen:
        failed = [a for a in answers if a[0] != 200]
        assert not failed, failed[:5]
        order = [a[1] for i, a in enumerate(answers) if i == 0 or a[1] != answers[i - 1][1]]
        assert order == [str(v1), str(v2), str(v3)]  # switched once each, never back
    # The new models really answer: each version's whole forecast differs (a step whose share
    # of the network's correction validation set to 0 forecasts the base, the same for all).
    values = {version: value for _, version, value in seen[0]}
    assert len({values[str(v)] for v in (v1, v2, v3)}) == 3, {v: values[str(v)][:3] for v in (v1, v2, v3)}


def test_canary_and_shadow_from_settings_and_the_admin_endpoint(versions) -> None:  # type: ignore[no-untyped-def]
    project, (v1, v2, _) = versions
    promote(project, v1, force=True)
    MlflowClient(project.tracking_uri).set_registered_model_alias(
        project.settings.model.name, "challenger", str(v2)
    )
    s = project.settings
    canary_all = Project(
        project.root,
        s.model_copy(update={"serving": s.serving.model_copy(update={"canary_percent": 100.0})}),
    )
    server = AppServer(create_app(canary_all)).start()
    try:
        with server.client() as client:

            def versions_of(n: int) -> list[tuple[str, str]]:
                out = []
                for _ in range(n):
                    answer = client.get("/forecast/seattle")
                    assert answer.status_code == 200, answer.text
                    out.append((answer.headers["x-model-version"], answer.headers["x-model-role"]))
                return out

            assert set(versions_of(10)) == {(str(v2), "canary")}  # from settings: all canary

            assert client.put("/admin/traffic", json={"canary_percent": 0}).status_code == 401
            split = client.put("/admin/traffic", json={"canary_percent": 50}, headers=AUTH)
            assert split.status_code == 200 and split.json()["challenger"] == v2
            assert set(versions_of(60)) == {(str(v1), "champion"), (str(v2), "canary")}

            shadow = {"canary_percent": 0, "shadow": True}
            assert client.put("/admin/traffic", json=shadow, headers=AUTH).status_code == 200
            assert set(versions_of(10)) == {(str(v1), "champion")}  # shadow is never returned

            def shadow_records() -> list[dict]:
                return client.get("/admin/shadow", headers=AUTH).json()["records"]

            wait_for(lambda: len(shadow_records()) >= 10, "shadow records")
            record = shadow_records()[-1]
            assert (record["champion"], record["challenger"]) == (v1, v2)
            assert record["mean_abs_difference"] > 0 and len(record["challenger_yhat"][0]) == 24

            bad = client.put("/admin/traffic", json={"canary_percent": 120}, headers=AUTH)
            assert bad.status_code == 422 and bad.json()["error"] == "bad_request"
            metrics = client.get("/metrics").text
        for role, version in (("champion", v1), ("canary", v2), ("shadow", v2)):
            assert f'tsops_predictions_total{{role="{role}",version="{version}"}}' in metrics
        assert f'tsops_shadow_abs_difference_count{{challenger="{v2}",champion="{v1}"}}' in metrics
    finally:
        server.stop()
