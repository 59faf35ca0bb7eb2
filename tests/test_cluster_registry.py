"""Cluster mode, the registry: an `mlflow server` on PostgreSQL holds runs, the registry and the
artefacts (through its proxy); a role that has never seen the trainer's folder loads the model
from the URL alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from conftest import write_synthetic_project
from tsops import registry
from tsops.features.ingest import ingest
from tsops.features.store import FeatureStoreClient
from tsops.lifecycle.promotion import promote
from tsops.models import dataset
from tsops.models.pipeline import train

LOAD_AND_PREDICT = """
import json, sys
import pandas as pd
from tsops import registry
from tsops.settings import Project

project = Project.load(sys.argv[1])
version, forecaster = registry.load_forecaster(project)
rows = pd.read_json(sys.argv[2], orient="split")
print(json.dumps({"version": version, "yhat": forecaster.predict(rows).tolist()}))
"""


def test_a_model_trained_in_one_folder_loads_in_another_through_the_tracking_server(
    mlflow_server, tmp_path: Path
) -> None:
    trainer = write_synthetic_project(tmp_path / "trainer", tracking_uri=mlflow_server.url)
    ingest(trainer, quiet=True)
    outcome = train(trainer, quick=True, show_progress=False)
    promote(trainer)

    client = MlflowClient(mlflow_server.url, mlflow_server.url)
    experiment = client.get_experiment_by_name(trainer.experiment)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's, not a path
    assert not (trainer.state_dir / "mlartifacts").exists()

    store = FeatureStoreClient(trainer)
    rows = dataset.build(store, trainer.settings.model.horizon).test.features[store.features.names].head(4)
    expected = registry.load(trainer, "champion").predict(rows).to_numpy()

    # Another role: an empty folder holding only the configuration, as a pod would.
    loader = tmp_path / "loader"
    loader.mkdir()
    shutil.copy(trainer.root / "tsops.yaml", loader / "tsops.yaml")
    (tmp_path / "rows.json").write_text(rows.to_json(orient="split", index=False))
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(loader), str(tmp_path / "rows.json")],
        capture_output=True, text=True, timeout=300, cwd=loader,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["version"] == outcome.version
    assert np.allclose(np.array(answer["yhat"]), expected, atol=1e-6)
    assert sorted(p.name for p in loader.iterdir()) == ["tsops.yaml"]  # it wrote nothing local
