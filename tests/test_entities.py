"""One mistyped entity in a stream never blocks training: training leaves out entities with
too little history, says which and why (console, MLflow, `tsops status`), and
`tsops entities drop` removes one from the stores."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import run_cli, synthetic_events, write_jsonl
from tsops import registry
from tsops.features.store import FeatureStoreClient
from tsops.settings import Project
from tsops.streaming.runner import run_stream


def test_a_mistyped_stream_entity_is_left_out_of_training_and_can_be_dropped(
    stream_project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    project = stream_project()
    events = synthetic_events(project, 3)
    typo = {"entity_id": "e0001", "timestamp": events[-1]["timestamp"], "value": 1.0}
    summary = run_stream(project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', [*events, typo])}")
    assert summary.processed == len(events) + 1  # `unknown_entities: accept` took the typo in

    # Train in the project's own tracking store (the stream used the shared champion's).
    raw = yaml.safe_load((project.root / "tsops.yaml").read_text())
    raw.pop("tracking", None)
    (project.root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    root = str(project.root)

    trained = run_cli("train", "--quick", "--project", root)
    assert trained.returncode == 0, trained.stderr
    assert "left out 1 entity with too little or unusable history" in trained.stdout
    assert "e0001: 1 steps, needs at least" in trained.stdout
    assert "tsops entities drop NAME" in trained.stdout

    project = Project.load(project.root, environ={})
    client = registry.connect(project)
    version = client.get_model_version_by_alias(project.settings.model.name, "challenger")
    left_out = json.loads(version.tags["tsops.left_out_entities"])
    assert list(left_out) == ["e0001"]
    run = client.get_run(version.run_id)
    assert run.data.params["left_out_entities"] == "1"
    assert json.loads(run.data.tags["tsops.left_out_entities"]) == left_out

    status = run_cli("status", "--project", root, "--json")
    assert json.loads(status.stdout)["models"][0]["left_out"] == left_out
    text = run_cli("status", "--project", root).stdout
    assert "left out 1 entity with too little or unusable history: e0001" in text

    wrong = run_cli("entities", "drop", "e00001", "--project", root)
    assert wrong.returncode == 2
    assert "no entity 'e00001'; did you mean 'e0001'" in wrong.stderr

    dropped = run_cli("entities", "drop", "e0001", "--project", root)
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped e0001: 1 offline row(s) removed" in dropped.stdout
    store = FeatureStoreClient(project)
    offline = store.read_offline()
    assert "e0001" not in set(offline["entity_id"]) and "e000" in set(offline["entity_id"])
    assert store.read_states(["e0001", "e000"]).keys() == {"e000"}
    assert store.online_row_count(["e0001"]) == 0 and store.online_row_count(["e000"]) == 1


def test_training_with_no_entity_long_enough_names_the_setting(tmp_path: Path) -> None:
    from tsops.features.ingest import ingest
    from tsops.scaffold import init_example

    root = tmp_path / "p"
    init_example(root, "synthetic", entities=2)
    raw = yaml.safe_load((root / "tsops.yaml").read_text())
    raw["backtest"]["holdout"] = 100_000
    (root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    ingest(Project.load(root, environ={}), quiet=True)
    result = run_cli("train", "--quick", "--project", str(root))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: backtest.holdout: no entity has enough history to train on (2 entit")
