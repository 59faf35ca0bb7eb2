"""`tsops serve` on the trained weather example: MLflow scoring equal to `mlflow models serve`,
OIP v2 through Triton's own client, forecast by entity, metrics, bad input and security."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from servers import free_port
from serving_server import AppServer
from tsops import registry
from tsops.errors import ConfigError
from tsops.features.store import FeatureStoreClient
from tsops.serving.app import create_app
from tsops.serving.batching import AdaptiveBatcher
from tsops.serving.command import serve
from tsops.settings import Project

TOKEN = "test-admin-token"


def with_serving(project: Project, **serving: object) -> Project:
    s = project.settings
    return Project(project.root, s.model_copy(update={"serving": s.serving.model_copy(update=serving)}))


@pytest.fixture(scope="module")
def server(trained_weather, weather_project) -> Iterator[AppServer]:  # type: ignore[no-untyped-def]
    app = create_app(with_serving(weather_project, admin_token=TOKEN, max_body_bytes=64 * 1024))
    running = AppServer(app).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def feature_rows(weather_project) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    store = FeatureStoreClient(weather_project)
    frame = store.read_offline()[store.features.names].dropna()
    return frame.iloc[[-1, -200, -1000]].reset_index(drop=True)


def mlflow_bodies(rows: pd.DataFrame) -> dict[str, tuple[str, bytes]]:
    split = json.loads(rows.to_json(orient="split", index=False))
    records = json.loads(rows.to_json(orient="records"))
    columns = {c: rows[c].tolist() for c in rows.columns}
    j = "application/json"
    return {
        "dataframe_split": (j, json.dumps({"dataframe_split": split}).encode()),
        "dataframe_records": (j, json.dumps({"dataframe_records": records}).encode()),
        "instances": (j, json.dumps({"instances": records}).encode()),
        "inputs": (j, json.dumps({"inputs": columns}).encode()),
        "csv": ("text/csv", rows.to_csv(index=False).encode()),
    }


def test_invocations_bodies_equal_mlflow_models_serve(server, mlflow_serve, feature_rows) -> None:
    for fmt, (content_type, body) in mlflow_bodies(feature_rows).items():
        headers = {"content-type": content_type}
        theirs = httpx.post(f"{mlflow_serve}/invocations", content=body, headers=headers)
        ours = httpx.post(f"{server.url}/invocations", content=body, headers=headers)
        assert theirs.status_code == 200, (fmt, theirs.text[:500])
        assert ours.status_code == 200, (fmt, ours.text[:500])
        assert ours.content == theirs.content, fmt
        assert ours.headers["x-model-version"] == "1"
    one_row = mlflow_bodies(feature_rows.head(1))["dataframe_split"][1]
    theirs = httpx.post(
        f"{mlflow_serve}/invocations",
        content=one_row,
        headers=headers | {"content-type": "application/json"},
    )
    ours = httpx.post(
        f"{server.url}/invocations", content=one_row, headers={"content-type": "application/json"}
    )
    assert ours.content == theirs.content


def test_oip_v2_through_the_official_triton_client(server, feature_rows, weather_project) -> None:
    name = weather_project.settings.model.name
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    meta = client.get_model_metadata(name)
    assert meta["versions"] == ["1"] and meta["outputs"][0]["shape"] == [-1, 24]
    expected = registry.load(weather_project, "champion").predict(feature_rows).to_numpy()

    matrix = feature_rows.to_numpy(dtype=np.float64)
    binary_input = triton.InferInput("input", list(matrix.shape), "FP64")
    binary_input.set_data_from_numpy(matrix)  # the client's default: binary tensor data
    result = client.infer(name, [binary_input], request_id="r1")
    assert np.array_equal(result.as_numpy("yhat"), expected)
    assert result.get_response()["model_version"] == "1" and result.get_response()["id"] == "r1"

    json_input = triton.InferInput("input", list(matrix.shape), "FP64")
    json_input.set_data_from_numpy(matrix, binary_data=False)
    wanted = [triton.InferRequestedOutput("yhat", binary_data=False)]
    pinned = client.infer(name, [json_input], model_version="1", outputs=wanted)
    assert np.array_equal(pinned.as_numpy("yhat"), expected)
    # the prediction intervals are extra outputs, in binary and JSON alike
    names = [o["name"] for o in meta["outputs"]]
    assert names == ["yhat", "yhat_lower_80", "yhat_upper_80", "yhat_lower_95", "yhat_upper_95"]
    lower, upper = result.as_numpy("yhat_lower_95"), result.as_numpy("yhat_upper_95")
    assert np.all(lower < expected) and np.all(expected < upper)
    bands = [triton.InferRequestedOutput(n, binary_data=False) for n in ("yhat_lower_80", "yhat_upper_80")]
    only = client.infer(name, [json_input], outputs=bands).get_response()["outputs"]
    assert [o["name"] for o in only] == ["yhat_lower_80", "yhat_upper_80"]
    assert np.all(result.as_numpy("yhat_lower_80") > lower)

    with pytest.raises(InferenceServerException, match=r"\[404\] not_found"):
        client.infer("no_such_model", [json_input])
    with pytest.raises(InferenceServerException, match=r"\[404\] not_found"):
        client.infer(name, [json_input], model_version="99")


def test_forecast_by_entity_is_timestamped_with_model_and_version(server, weather_project) -> None:
    store = FeatureStoreClient(weather_project)
    offline = store.read_offline()
    time_col, ent = "date", "city"
    last = offline.groupby(ent)[time_col].max()
    champion = registry.load(weather_project, "champion")
    with server.client() as client:
        answer = client.get("/forecast/seattle")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["model"], body["version"], body["entity"]) == ("weather", 1, "seattle")
        expected_times = [(last["seattle"] + pd.Timedelta(hours=h)).isoformat() + "Z" for h in range(1, 25)]
        assert [p["time"] for p in body["forecast"]] == expected_times
        features = store.online(["seattle"])[store.features.names]
        expected = champion.predict(features).to_numpy()[0]
        assert np.allclose([p["value"] for p in body["forecast"]], expected, rtol=0, atol=1e-9)
        for p in body["forecast"]:  # the calibrated intervals of every step, nested
            assert p["lower_95"] < p["lower_80"] < p["value"] < p["upper_80"] < p["upper_95"]

        many = client.post("/forecast", json={"entities": ["san_francisco", "seattle"]}).json()
        assert [f["entity"] for f in many["forecasts"]] == ["san_francisco", "seattle"]
        again = many["forecasts"][1]["forecast"]
        assert [p["time"] for p in again] == expected_times
        # a 2-row model call may round float32 kernels differently from a 1-row call
        assert np.allclose([p["value"] for p in again], expected, rtol=1e-7, atol=0)
        assert many["forecasts"][0]["origin"] == last["san_francisco"].isoformat() + "Z"


def test_bad_requests_get_a_4xx_json_error_never_a_5xx(server, feature_rows) -> None:
    good = feature_rows.head(1)
    names = list(good.columns)
    nan_row = good.copy()
    nan_row.iloc[0, 3] = np.nan
    j = {"content-type": "application/json"}
    empty = json.dumps({"dataframe_split": {"columns": names, "data": []}}).encode()
    short_row = json.dumps({"dataframe_split": {"columns": names, "data": [[1.0, 2.0]]}}).encode()
    infinite = b'{"inputs": [[' + b",".join([b"1"] * (len(names) - 1) + [b"Infinity"]) + b"]]}"
    narrow = b'{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}'
    strings = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}'
    oversize = b"[" + b"1.0," * 40_000 + b"1.0]"
    cases = [
        ("POST", "/invocations", b"{not json", j, 400),
        ("POST", "/invocations", b"[1, 2]", j, 400),
        ("POST", "/invocations", b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}', j, 400),
        ("POST", "/invocations", empty, j, 400),
        ("POST", "/invocations", short_row, j, 400),
        ("POST", "/invocations", infinite, j, 400),
        ("POST", "/invocations", nan_row.to_csv(index=False).encode(), {"content-type": "text/csv"}, 400),
        ("POST", "/invocations", b"a,b\n1,2\n", {"content-type": "text/csv"}, 400),
        ("POST", "/invocations", b"{}", {"content-type": "text/plain"}, 415),
        ("POST", "/invocations", b"{}", {"content-type": "application/json; charset=latin-1"}, 415),
        ("POST", "/invocations", oversize, j, 413),
        ("GET", "/forecast/no_such_city", b"", {}, 404),
        ("POST", "/forecast", b'{"entities": []}', j, 422),
        ("POST", "/forecast", b'{"entities": ["atlantis", "lemuria"]}', j, 404),
        ("POST", "/v2/models/weather/infer", narrow, j, 400),
        ("POST", "/v2/models/weather/infer", strings, j, 400),
        ("POST", "/v2/models/nope/infer", b'{"inputs": []}', j, 404),
        ("GET", "/v2/models/weather/versions/7/ready", b"", {}, 404),
        ("GET", "/no/such/route", b"", {}, 404),
    ]  # fmt: skip
    with server.client() as client:
        for method, path, body, headers, status in cases:
            answer = client.request(method, path, content=body, headers=headers)
            assert answer.status_code == status, (path, body[:80], answer.text[:300])
            error = answer.json()
            assert error["error"] and error["detail"], (path, error)
        # the server is still fine afterwards
        assert client.get("/forecast/seattle").status_code == 200


def test_metrics_report_requests_latency_batches_versions_and_errors(server) -> None:
    with server.client() as client:
        client.get("/forecast/seattle")
        client.get("/forecast/atlantis")
        text = client.get("/metrics").text
    assert 'tsops_requests_total{route="/forecast/{entity}",status="200"}' in text
    assert 'tsops_request_seconds_bucket{le="0.005",route="/forecast/{entity}"}' in text
    assert 'tsops_batch_rows_count{version="1"}' in text
    assert 'tsops_model_info{name="weather",role="champion",version="1"} 1.0' in text
    assert 'tsops_errors_total{kind="not_found"}' in text
    assert 'tsops_predictions_total{role="champion",version="1"}' in text


def test_openapi_docs_are_served(server) -> None:
    with server.client() as client:
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
    assert {"/invocations", "/forecast/{entity}", "/v2/models/{name}/infer", "/metrics"} <= set(paths)


def test_admin_endpoints_need_the_bearer_token(server) -> None:
    with server.client() as client:
        assert client.get("/admin/traffic").status_code == 401
        wrong = client.get("/admin/traffic", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        right = client.get("/admin/traffic", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200 and right.json()["champion"] == 1
        reload = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert reload.status_code == 200 and reload.json()["champion"] == 1


def test_admin_endpoints_are_disabled_without_a_configured_token(weather_project, trained_weather) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    with TestClient(create_app(weather_project, watch=False)) as client:
        answer = client.put("/admin/traffic", json={"canary_percent": 50})
        assert answer.status_code == 403 and "admin_token" in answer.json()["detail"]


def test_serve_refuses_a_public_address_without_a_token(weather_project) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="refusing to bind 0.0.0.0"):
        serve(weather_project.root, port=free_port(), host="0.0.0.0")


def test_concurrent_requests_are_batched_and_answered_as_if_alone(server, weather_project) -> None:
    store = FeatureStoreClient(weather_project)
    rows = store.read_offline()[store.features.names].dropna().tail(64).reset_index(drop=True)
    champion = registry.load(weather_project, "champion")
    alone = np.stack([champion.predict(rows.iloc[[i]]).to_numpy()[0] for i in range(len(rows))])

    def batches(text: str) -> tuple[float, float]:
        count = sum_ = 0.0
        for line in text.splitlines():
            if line.startswith('tsops_batch_rows_count{version="1"}'):
                count = float(line.split()[-1])
            if line.startswith('tsops_batch_rows_sum{version="1"}'):
                sum_ = float(line.split()[-1])
        return count, sum_

    before = batches(httpx.get(f"{server.url}/metrics").text)

    async def fire() -> list[np.ndarray]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            bodies = [
                {"dataframe_split": {"columns": list(rows.columns), "data": [row]}}
                for row in rows.to_numpy().tolist()
            ]
            answers = await asyncio.gather(*(client.post("/invocations", json=b) for b in bodies))
        return [np.array(list(a.json()["predictions"][0].values())) for a in answers]

    served = np.stack(asyncio.run(fire()))
    after = batches(httpx.get(f"{server.url}/metrics").text)
    calls, merged_rows = after[0] - before[0], after[1] - before[1]
    assert merged_rows == 64 and calls < 64  # fewer model calls than requests: merged
    # each request got its own rows back; float32 kernels may round the last bit differently
    # by batch size, so "identical" is to float32 rounding (rows mixed up would be ~1 degree)
    assert np.allclose(served, alone, rtol=1e-7, atol=0)


def test_batcher_cuts_at_max_size_and_splits_answers_back() -> None:
    seen: list[int] = []

    def predict(matrix: np.ndarray) -> np.ndarray:
        seen.append(len(matrix))
        return matrix * 2

    async def run() -> list[np.ndarray]:
        batcher = AdaptiveBatcher(predict, max_batch_size=8, max_wait_s=0.05)
        blocks = [np.full((1 + i % 3, 2), float(i)) for i in range(20)]
        answers = await asyncio.gather(*(batcher.predict(b) for b in blocks))
        batcher.close()
        return [a - 2 * b for a, b in zip(answers, blocks, strict=True)]

    differences = asyncio.run(run())
    assert all((d == 0).all() for d in differences)
    assert sum(seen) == sum(1 + i % 3 for i in range(20))
    assert max(seen) <= 8 + 2 and len(seen) < 20


def test_schemathesis_finds_no_server_error(trained_weather, weather_project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Property-based requests generated from our OpenAPI schema, admin token included."""
    project = with_serving(weather_project, admin_token=TOKEN, max_body_bytes=64 * 1024)
    running = AppServer(create_app(project, watch=False)).start()
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"), "run",
                f"{running.url}/openapi.json", "--checks", "not_a_server_error",
                "--max-examples", "20", "--seed", "7",
                "--header", f"Authorization: Bearer {TOKEN}",
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    finally:
        running.stop()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    tested = re.search(r"Selected: (\d+)/\d+\s+Tested: (\d+)", run.stdout)
    assert tested and tested.group(1) == tested.group(2) and int(tested.group(2)) >= 18


def test_forecast_answers_known_entities_and_names_unknown_ones_with_close_matches(server) -> None:
    with server.client() as client:
        many = client.post("/forecast", json={"entities": ["seattle", "seatle", "atlantis"]})
        assert many.status_code == 200, many.text
        body = many.json()
        assert [f["entity"] for f in body["forecasts"]] == ["seattle"]
        assert body["errors"] == [
            {
                "entity": "seatle",
                "error": "not_found",
                "detail": "no current features for entity 'seatle'; did you mean 'seattle'?",
            },
            {
                "entity": "atlantis",
                "error": "not_found",
                "detail": "no current features for entity 'atlantis'",
            },
        ]
        all_known = client.post("/forecast", json={"entities": ["seattle"]}).json()
        assert "errors" not in all_known
        one = client.get("/forecast/san_fransisco")
        assert one.status_code == 404
        assert one.json()["detail"] == (
            "entity: no current features for entity 'san_fransisco'; did you mean 'san_francisco'?"
        )


def test_forecast_by_entity_reads_a_redis_online_store(
    weather_project, trained_weather, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from tsops.features.ingest import ingest

    raw = yaml.safe_load((weather_project.root / "tsops.yaml").read_text())
    raw["project"] = "weather_serving_redis"
    raw["data"]["path"] = str(weather_project.data_path)
    raw["tracking"] = {"uri": weather_project.tracking_uri, "experiment": "weather"}
    raw["stores"] = {"online": {"type": "redis", "connection_string": f"127.0.0.1:{redis_server.port}"}}
    (tmp_path / "tsops.yaml").write_text(yaml.safe_dump(raw))
    project = Project.load(tmp_path, environ={})
    ingest(project, quiet=True)
    store = FeatureStoreClient(weather_project)
    expected = registry.load(weather_project, "champion").predict(
        store.online(["seattle"])[store.features.names]
    )
    with TestClient(create_app(project, watch=False)) as client:
        for _ in range(2):  # the second read must not see state left by the first
            answer = client.get("/forecast/seattle")
            assert answer.status_code == 200, answer.text
            values = [p["value"] for p in answer.json()["forecast"]]
            assert np.allclose(values, expected.to_numpy()[0], rtol=1e-12, atol=0)
        assert client.get("/forecast/atlantis").status_code == 404


def test_an_oversize_body_without_content_length_is_refused(server) -> None:
    chunks = iter([b'{"inputs": [' + b"1.0," * 10_000] * 4)  # sent chunked: no length header
    with server.client() as client:
        answer = client.post("/invocations", content=chunks, headers={"content-type": "application/json"})
        assert answer.status_code == 413 and answer.json()["error"] == "payload_too_large"
    with server.client() as client:
        assert client.get("/forecast/seattle").status_code == 200


def test_metrics_stay_in_process_after_feast_is_imported() -> None:
    """Feast's metrics module turns on prometheus_client's file-backed multiprocess values for
    the whole process; tsops keeps its own metrics in memory (they are per process)."""
    import os

    import feast.metrics  # noqa: F401  (sets PROMETHEUS_MULTIPROC_DIR, as any Feast store does)
    from prometheus_client import CollectorRegistry, Counter, values

    assert "feast_metrics_" in os.environ["PROMETHEUS_MULTIPROC_DIR"]
    counter = Counter("tsops_probe_total", "probe", registry=CollectorRegistry())
    counter.inc()
    assert values.ValueClass is values.MutexValue
    assert type(counter._value) is values.MutexValue
