"""A registered model stands alone: it loads and predicts in a fresh virtualenv that has its own
requirements (MLflow, torch, pandas, numpy) but not tsops, and MLServer's MLflow runtime (what
KServe runs for MLflow models) serves it there over the Open Inference Protocol."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import _start_or_fail, free_port
from servers import wait_for_http
from tsops import registry
from tsops.features.store import FeatureStoreClient
from tsops.models import dataset

MLSERVER = ["mlserver==1.7.1", "mlserver-mlflow==1.7.1"]


@pytest.fixture(scope="module")
def model_dir(stream_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The champion's artefacts, downloaded from the registry into a plain folder."""
    import mlflow

    registry.connect(stream_model)
    into = tmp_path_factory.mktemp("model")
    uri = f"models:/{stream_model.settings.model.name}@champion"
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(into)))


@pytest.fixture(scope="module")
def bare_env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the model's requirements.txt and MLServer, and no tsops: its python."""
    venv = tmp_path_factory.mktemp("bare-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert not [r for r in requirements if r.split("=")[0].strip().lower() == "tsops"]
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements, *MLSERVER],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def feature_rows(stream_model) -> pd.DataFrame:
    store = FeatureStoreClient(stream_model)
    built = dataset.build(store, stream_model.settings.model.horizon)
    return built.test.features[store.features.names].head(5).reset_index(drop=True)


LOAD = """
import json, sys
import mlflow, pandas as pd
try:
    import tsops
    raise SystemExit("tsops is importable here: the environment is not bare")
except ModuleNotFoundError:
    pass
model = mlflow.pyfunc.load_model(sys.argv[1])
rows = pd.read_json(sys.argv[2], orient="split")
print(json.dumps(model.predict(rows).to_numpy().tolist()))
"""


def test_the_registered_model_predicts_the_same_numbers_without_tsops(
    stream_model, model_dir: Path, bare_env: Path, feature_rows: pd.DataFrame, tmp_path: Path
) -> None:
    expected = registry.load(stream_model, "champion").predict(feature_rows).to_numpy()
    rows = tmp_path / "rows.json"
    rows.write_text(feature_rows.to_json(orient="split", index=False, double_precision=15))
    done = subprocess.run(
        [str(bare_env), "-c", LOAD, str(model_dir), str(rows)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    assert got.shape == expected.shape
    assert np.allclose(got, expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def mlserver(model_dir: Path, bare_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlserver start` with the MLflow runtime on the model folder, in the bare environment."""
    folder = tmp_path_factory.mktemp("mlserver")
    port = free_port()
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": free_port(),
                "metrics_port": free_port(),
                "parallel_workers": 0,
            }
        )  # fmt: skip
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "forecaster",
                "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"uri": str(model_dir)},
            }
        )  # fmt: skip
    )
    log = folder / "mlserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bare_env.parent / "mlserver"), "start", str(folder)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    _start_or_fail(
        "mlserver",
        lambda: wait_for_http("mlserver", f"{url}/v2/models/forecaster/ready", proc, log.read_text, 240),
    )
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_mlserver_serves_the_model_over_oip_with_one_named_input_per_feature(
    stream_model, mlserver: str, feature_rows: pd.DataFrame
) -> None:
    expected = registry.load(stream_model, "champion").predict(feature_rows).to_numpy()
    metadata = httpx.get(f"{mlserver}/v2/models/forecaster", timeout=10).json()
    names = [i["name"] for i in metadata["inputs"]]
    assert names == list(feature_rows.columns)  # the signature's columns, as docs/serving.md maps
    inputs = [
        {"name": c, "datatype": "FP64", "shape": [len(feature_rows), 1], "data": feature_rows[c].tolist()}
        for c in feature_rows.columns
    ]
    answer = httpx.post(f"{mlserver}/v2/models/forecaster/infer", json={"inputs": inputs}, timeout=60)
    assert answer.status_code == 200, answer.text[-2000:]
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    horizon = expected.shape[1]
    got = np.array([outputs[f"yhat_{h}"] for h in range(1, horizon + 1)]).T
    assert np.allclose(got, expected, rtol=0, atol=1e-6)
