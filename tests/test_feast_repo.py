"""The generated `feature_repo/` is plain Feast: in a fresh virtualenv with Feast and nothing of
tsops, `feast plan`, `apply`, `materialize-incremental` and `serve` work, and Feast's own
feature server answers with what a tsops stream wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import _start_or_fail, free_port, run_cli, synthetic_events, write_jsonl
from servers import wait_for_http
from tsops.features.store import FeatureStoreClient

FEAST = "feast[duckdb]==0.67.0"


@pytest.fixture(scope="module")
def feast_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with Feast alone: its `bin` folder."""
    import feast

    assert FEAST.endswith(feast.__version__), "keep the test's Feast at the project's version"
    venv = tmp_path_factory.mktemp("feast-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", FEAST],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    no_tsops = subprocess.run([str(venv / "bin" / "python"), "-c", "import tsops"], capture_output=True)
    assert no_tsops.returncode != 0
    return venv / "bin"


def _feast(bindir: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [str(bindir / "feast"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_feature_repo_works_with_feast_alone_and_its_server_reads_the_stream(
    stream_project, feast_only: Path, tmp_path: Path
) -> None:
    project = stream_project()
    repo = project.feature_repo
    assert "tsops" not in "".join(
        line
        for line in (repo / "features.py").read_text().splitlines()
        if line.startswith(("from", "import"))
    )
    for args in (["plan"], ["apply"]):
        done = _feast(feast_only, repo, *args)
        assert done.returncode == 0, f"feast {args[0]}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    done = _feast(feast_only, repo, "materialize-incremental", "2100-01-01T00:00:00")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    # A tsops stream writes the latest features of each entity to the online store ...
    events = write_jsonl(tmp_path / "events.jsonl", synthetic_events(project, 6))
    streamed = run_cli("stream", "--project", str(project.root), "--source", f"file:{events}", "--json")
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    client = FeatureStoreClient(project)
    ent = project.settings.series.entity_col
    entities = sorted({json.loads(line)[ent] for line in events.read_text().splitlines()})
    expected = client.online(entities).set_index(ent)

    # ... and Feast's own feature server, in its own process and environment, reads them back.
    port = free_port()
    log = tmp_path / "feast-serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(feast_only / "feast"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=repo, stdout=out, stderr=subprocess.STDOUT,
            env={"PATH": f"{feast_only}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _start_or_fail(
            "feast serve", lambda: wait_for_http("feast serve", f"{url}/health", proc, log.read_text)
        )
        names = client.features.names
        body = {"features": [f"series_features:{n}" for n in names], "entities": {ent: entities}}
        answer = httpx.post(f"{url}/get-online-features", json=body, timeout=30)
        assert answer.status_code == 200, answer.text[-2000:]
        reply = answer.json()
        columns = reply["metadata"]["feature_names"]
        values = {c: r["values"] for c, r in zip(columns, reply["results"], strict=True)}
        assert values[ent] == entities
        for name in names:
            got = np.array([np.nan if v is None else v for v in values[name]], dtype=float)
            assert np.allclose(got, expected.loc[entities, name].to_numpy(float), equal_nan=True), name
    finally:
        proc.terminate()
        proc.wait(timeout=30)
