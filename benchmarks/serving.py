"""Serving benchmark: `tsops serve` side by side with `mlflow models serve`, in one run.

    .venv/bin/python benchmarks/serving.py [--project DIR] [--duration 10] [--redis]

Starts, on loopback ports, for the same registered champion:
  * `mlflow models serve` on the registered model (192-ish named float columns: MLflow casts
    column by column) and on the same forecaster saved with a tensor signature
    (float32 [-1, n]): MLflow at its best;
  * `tsops serve` (one worker, adaptive batching).
Drives each with the same 1-row requests under `wrk` at concurrency 8 and 64 and prints
req/s, p50/p95/p99 and the ratios; compares tsops' `/ping` (a constant on the same stack:
the floor). Then, sequentially from one client, `GET /forecast/{entity}` against the two-hop
path a user builds today: Feast `get_online_features` in the client + a call to
`mlflow models serve` (tensor). With `--redis`, the forecast comparison is repeated with the
Feast online store on a throw-away `redis-server`.

Without `--project` a weather example is created, ingested, trained (quick) and promoted in
a temporary folder first. Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import RedisServer, free_port  # noqa: E402
from tsops import registry  # noqa: E402
from tsops.features.store import FeatureStoreClient  # noqa: E402
from tsops.settings import Project  # noqa: E402

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


class TensorForecaster(mlflow.pyfunc.PythonModel):
    """The same forecaster behind a tensor signature: MLflow's fastest input path."""

    def __init__(self, columns: list[str], horizon: int):
        self.columns, self.horizon = columns, horizon

    def load_context(self, context):  # type: ignore[no-untyped-def]
        import torch

        from tsops.models.lstm import Forecaster

        torch.set_num_threads(1)
        self.forecaster = Forecaster.load(Path(context.artifacts["forecaster"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        frame = pd.DataFrame(np.asarray(model_input, dtype=np.float64), columns=self.columns)
        yhat = self.forecaster.predict(frame)
        return pd.DataFrame(yhat, columns=[f"yhat_{h}" for h in range(1, self.horizon + 1)])


def prepare_project(folder: Path) -> Project:
    from tsops.features.ingest import ingest
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train
    from tsops.scaffold import init_example

    project = init_example(folder / "proj", "weather")
    ingest(project, quiet=True)
    train(project, quick=True, show_progress=False)
    promote(project)
    return project


def save_tensor_model(project: Project, folder: Path) -> Path:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    _, forecaster = registry.load_forecaster(project)
    columns = forecaster.cfg.input_names
    horizon = forecaster.cfg.horizon
    weights = forecaster.save(folder / "forecaster")
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(columns)))]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, horizon))]),
    )
    target = folder / "tensor_model"
    mlflow.pyfunc.save_model(
        str(target),
        python_model=TensorForecaster(columns, horizon),
        artifacts={"forecaster": str(weights)},
        signature=signature,
    )
    return target


def start(cmd: list[str], env: dict[str, str], log: Path, port: int, stack: ExitStack) -> str:
    handle = open(log, "w")
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT)
    stack.callback(lambda: (proc.terminate(), proc.wait(30), handle.close()))
    url = f"http://{HOST}:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return url
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{cmd[:3]} did not start:\n{log.read_text()[-3000:]}")


def mlflow_serve(model_uri: str, tracking_uri: str, log: Path, stack: ExitStack) -> str:
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
           "--host", HOST, "--port", str(port)]  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return start(cmd, env, log, port, stack)


def tsops_serve(project: Project, env: dict[str, str], log: Path, stack: ExitStack) -> str:
    port = free_port()
    code = (
        "import sys; from pathlib import Path; from tsops.serving.command import serve; "
        "serve(Path(sys.argv[1]), port=int(sys.argv[2]))"
    )
    return start([sys.executable, "-c", code, str(project.root), str(port)], env, log, port, stack)


WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %.1f %.1f %.1f\\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def wrk(url: str, method: str, body: bytes | None, connections: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(method=method, body=json.dumps((body or b"").decode())))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s",
         script.name, url], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(script.name)
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    n, errors, micros, p50, p95, p99 = (float(x) for x in line.split()[1:])
    return {"rps": n / (micros / 1e6), "errors": int(errors), "p50": p50 / 1e3,
            "p95": p95 / 1e3, "p99": p99 / 1e3}  # fmt: skip


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "rps": len(ms) / (sum(ms) / 1e3),
    }


def sequential(call: Any, n: int) -> dict[str, float]:
    for _ in range(min(50, n)):
        call()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


def http_caller(url: str, method: str, path: str, body: bytes | None = None) -> Any:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"Content-Type": "application/json"}

    def call() -> bytes:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:300]!r}")
        return data

    return call


def two_hop_caller(store: FeatureStoreClient, entity: str, mlflow_url: str, named: bool = False) -> Any:
    """What users build today: Feast online read in a transformer, then an HTTP model call
    (`named`: the registered model's own named-column input, else the tensor variant's)."""
    ent = store.project.settings.series.entity_col
    host, port = mlflow_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"Content-Type": "application/json"}

    def call() -> bytes:
        features = store.store.get_online_features(features=store.refs, entity_rows=[{ent: entity}]).to_dict()
        values = [features[n][0] for n in store.features.names]
        payload = (
            {"dataframe_split": {"columns": store.features.names, "data": [values]}}
            if named
            else {"inputs": [values]}
        )
        body = json.dumps(payload)
        conn.request("POST", "/invocations", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"two-hop: {response.status} {data[:300]!r}")
        return data

    return call


def show(title: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{title}")
    print(f"| {'endpoint':58} | {'req/s':>8} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | err |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 9}|-----|")
    for name, r in rows:
        print(f"| {name:58} | {r['rps']:8.0f} | {r['p50']:7.2f} | {r['p95']:7.2f} | "
              f"{r['p99']:7.2f} | {r.get('errors', 0):3d} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="a trained, promoted tsops project")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--sequential", type=int, default=2000, help="requests per latency run")
    parser.add_argument("--redis", action="store_true", help="also on a Redis online store")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="tsops-bench-"))
    project = Project.load(args.project) if args.project else prepare_project(work)
    registry.connect(project)
    store = FeatureStoreClient(project)
    entity = str(store.read_offline()[project.settings.series.entity_col].iloc[-1])
    row = store.online([entity])[store.features.names].iloc[0].tolist()
    names = store.features.names
    named = json.dumps({"dataframe_split": {"columns": names, "data": [row]}}).encode()
    tensor = json.dumps({"inputs": [row]}).encode()
    name = project.settings.model.name
    print(f"project {project.root}, model {name}, {len(names)} feature columns, entity {entity}")
    with ExitStack() as stack:
        ml_named = mlflow_serve(f"models:/{name}@champion", project.tracking_uri,
                                work / "mlflow-named.log", stack)  # fmt: skip
        ml_tensor = mlflow_serve(str(save_tensor_model(project, work)), project.tracking_uri,
                                 work / "mlflow-tensor.log", stack)  # fmt: skip
        ours = tsops_serve(project, {}, work / "tsops.log", stack)
        d = args.duration
        results: dict[str, dict] = {}
        for c in (8, 64):
            rows = [
                (f"mlflow models serve, named columns (c={c})",
                 wrk(f"{ml_named}/invocations", "POST", named, c, d)),
                (f"mlflow models serve, tensor signature (c={c})",
                 wrk(f"{ml_tensor}/invocations", "POST", tensor, c, d)),
                (f"tsops serve /invocations, same named body (c={c})",
                 wrk(f"{ours}/invocations", "POST", named, c, d)),
                (f"tsops serve /invocations, same tensor body (c={c})",
                 wrk(f"{ours}/invocations", "POST", tensor, c, d)),
                (f"tsops serve /v2 infer, 1 x {len(names)} FP64 (c={c})",
                 wrk(f"{ours}/v2/models/{name}/infer", "POST", json.dumps({"inputs": [
                     {"name": "input", "shape": [1, len(names)], "datatype": "FP64",
                      "data": row}]}).encode(), c, d)),
                (f"tsops serve GET /forecast/{{entity}} (c={c})",
                 wrk(f"{ours}/forecast/{entity}", "GET", None, c, d)),
                (f"tsops serve GET /ping: constant, the floor (c={c})",
                 wrk(f"{ours}/ping", "GET", None, c, d)),
            ]  # fmt: skip
            show(f"1-row requests, wrk -t2 -c{c} -d{d}s", rows)
            results.update({f"{c}:{i}": r for i, (_, r) in enumerate(rows)})
            named_r, tensor_r, ours_named, ours_tensor, _, _, floor = (r for _, r in rows)
            print(f"\nc={c}: tsops/mlflow(tensor) req/s = {ours_tensor['rps'] / tensor_r['rps']:.1f}x, "
                  f"tsops/mlflow(named) = {ours_named['rps'] / named_r['rps']:.0f}x, "
                  f"tsops LSTM/constant = {ours_tensor['rps'] / floor['rps']:.0%}")  # fmt: skip

        n = args.sequential
        seq = [
            ("tsops GET /forecast/{entity} (sqlite)",
             sequential(http_caller(ours, "GET", f"/forecast/{entity}"), n)),
            ("two-hop: Feast get_online_features + mlflow (tensor) (sqlite)",
             sequential(two_hop_caller(store, entity, ml_tensor), max(200, n // 4))),
            ("two-hop: Feast get_online_features + mlflow (registered) (sqlite)",
             sequential(two_hop_caller(store, entity, ml_named, named=True), max(100, n // 20))),
        ]  # fmt: skip
        if args.redis:
            redis = RedisServer().start()
            stack.callback(redis.stop)
            env = {"TSOPS_STORES__ONLINE__TYPE": "redis",
                   "TSOPS_STORES__ONLINE__CONNECTION_STRING": f"{redis.host}:{redis.port}"}  # fmt: skip
            from tsops.features.ingest import ingest

            on_redis = Project.load(project.root, environ={**os.environ, **env})
            ingest(on_redis, quiet=True)
            ours_redis = tsops_serve(project, env, work / "tsops-redis.log", stack)
            seq += [
                ("tsops GET /forecast/{entity} (redis)",
                 sequential(http_caller(ours_redis, "GET", f"/forecast/{entity}"), n)),
                ("two-hop: Feast get_online_features + mlflow (tensor) (redis)",
                 sequential(two_hop_caller(FeatureStoreClient(on_redis), entity, ml_tensor),
                            max(200, n // 4))),
                ("two-hop: Feast get_online_features + mlflow (registered) (redis)",
                 sequential(two_hop_caller(FeatureStoreClient(on_redis), entity, ml_named, named=True),
                            max(100, n // 20))),
            ]  # fmt: skip
        floor = sequential(http_caller(ours, "GET", "/ping"), n)
        show(f"forecast by entity, sequential (one client, {n} requests)",
             [*seq, ("tsops GET /ping: constant, the floor", floor)])  # fmt: skip
        for i in range(0, len(seq), 3):
            (a, ra), (_, rt), (_, rn) = seq[i : i + 3]
            print(f"{a}: p99 {ra['p99']:.2f} ms; p50 {rt['p50'] / ra['p50']:.1f}x lower than two-hop "
                  f"to MLflow at its best (tensor), {rn['p50'] / ra['p50']:.0f}x lower than two-hop to "
                  f"the registered model as logged")  # fmt: skip
        goal = seq[1][1]["p50"] / 20
        print(f"a 20x lower p50 than two-hop (tensor) would be {goal:.2f} ms; one HTTP round trip "
              f"to a constant endpoint of the same server takes p50 {floor['p50']:.2f} ms")  # fmt: skip
    print(f"\nlogs in {work}")


if __name__ == "__main__":
    main()
