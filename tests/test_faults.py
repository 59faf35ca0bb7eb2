"""The standing fault suite (issue 19): each test injects one fault and asserts what a user can
rely on: nothing lost, one clear message naming the cause, the exit code. docs/reliability.md
lists every fault with its promise and the test that keeps it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import run_cli

# --- Batch ---------------------------------------------------------------------------------


def _batch_job(folder: Path, target_path: str) -> Path:
    """A job whose target is `target_path`; its model does not exist, so a run that got past
    the target check would fail loading it (the refusal must come first, before any work)."""
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(folder / "in.parquet", index=False)
    job = folder / "job.yaml"
    raw = {
        "model": {"uri": "models:/nothing@champion", "tracking_uri": f"sqlite:///{folder / 'no.db'}"},
        "data": {
            "source": {"type": "parquet", "params": {"path": "in.parquet"}},
            "target": {"type": "parquet", "params": {"path": target_path}},
        },
    }
    job.write_text(yaml.safe_dump(raw))
    return job


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_fifo() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (".", "is a folder that this target did not write"),
        ("data", "is a folder that this target did not write"),
        ("empty", "is a folder (empty) that this target did not write"),
        ("fifo", "is not a regular file (a device, pipe or socket)"),
        ("link.parquet", "is a symbolic link"),
    ],
)
def test_batch_refuses_a_target_it_would_destroy(tmp_path: Path, target: str, says: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.csv").write_text("precious\n")
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.parquet").symlink_to(tmp_path / "data" / "keep.csv")
    job = _batch_job(tmp_path, target)
    before = _tree(tmp_path)
    out = run_cli("batch", "--config", str(job), timeout=120)
    assert out.returncode == 2, out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr
    assert "data.target.params.path" in out.stderr
    assert _tree(tmp_path) == before  # nothing moved, replaced or removed


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder that cannot be written to: a read-only tmpfs as root (root ignores modes),
    else mode 555."""
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def test_batch_to_a_read_only_folder_exits_2_naming_it(tmp_path: Path) -> None:
    with read_only_folder(tmp_path / "ro") as ro:
        job = _batch_job(tmp_path, "ro/out.parquet")
        out = run_cli("batch", "--config", str(job), timeout=120)
    assert out.returncode == 2, out.stderr
    assert f"cannot write in {ro}" in out.stderr and "read-only" in out.stderr
    assert "Traceback" not in out.stderr


# --- Stores and services -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A weather project of this module's own (its tests corrupt files and put them back)."""
    from tsops.features.ingest import ingest
    from tsops.scaffold import init_example

    project = init_example(tmp_path_factory.mktemp("faults") / "proj", "weather")
    ingest(project, quiet=True)
    return project


@contextlib.contextmanager
def corrupted(path: Path, garbage: bytes | None = None) -> Iterator[Path]:
    """`path` truncated to half (a torn write) or replaced by `garbage`, put back afterwards."""
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2] if garbage is None else garbage)
    try:
        yield path
    finally:
        path.write_bytes(original)


def test_a_half_written_offline_file_is_named_and_ingest_replace_rebuilds_it(ingested) -> None:
    root = str(ingested.root)
    with corrupted(ingested.offline_path) as path:
        for command in (["train", "--quick"], ["status"], ["ingest"]):
            out = run_cli(*command, "--project", root, timeout=300)
            assert out.returncode == 2, (command, out.stderr)
            assert f"{path}: the offline store cannot be read" in out.stderr, out.stderr
            assert "tsops ingest --replace" in out.stderr and "Traceback" not in out.stderr
        out = run_cli("ingest", "--replace", "--project", root, timeout=300)
        assert out.returncode == 0, out.stderr
        assert len(pd.read_parquet(path)) > 0


@pytest.mark.parametrize("after_s", [1.5, 4.0])
def test_ingest_killed_midway_leaves_the_previous_store_readable(ingested, after_s: float) -> None:
    import signal
    import time

    from conftest import TSOPS

    before = pd.read_parquet(ingested.offline_path)
    proc = subprocess.Popen(
        [*TSOPS, "ingest", "--replace", "--project", str(ingested.root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after = pd.read_parquet(ingested.offline_path)  # the old file or the new one, never half
    pd.testing.assert_frame_equal(after, before)  # the same history: the same rows either way


def test_an_unreadable_stream_part_is_quarantined_not_fatal(ingested, caplog) -> None:
    from tsops.features.store import FeatureStoreClient

    client = FeatureStoreClient(ingested)
    parts = ingested.offline_path.parent / "stream"
    parts.mkdir(exist_ok=True)
    (parts / "part-1.parquet").write_bytes(b"PAR1 torn")
    before = len(client.read_offline())
    with caplog.at_level("WARNING", logger="tsops.offline"):
        assert client.compact_offline() == 0
    assert not (parts / "part-1.parquet").exists()
    assert (parts / "quarantine" / "part-1.parquet").read_bytes() == b"PAR1 torn"  # kept for a look
    assert "quarantined an unreadable stream part" in caplog.text and "part-1.parquet" in caplog.text
    assert len(client.read_offline()) == before
    assert client.compact_offline() == 0  # the next command is not blocked by it


def test_a_corrupt_online_database_is_named_in_status(ingested) -> None:
    with corrupted(ingested.state_dir / "online.db", b"this is not a database" * 200) as path:
        out = run_cli("status", "--project", str(ingested.root), timeout=300)
    assert out.returncode == 2, out.stderr
    assert f"{path}: the SQLite online store cannot be read" in out.stderr
    assert "tsops ingest" in out.stderr and "Traceback" not in out.stderr


def _project_with(root: Path, **sections: dict) -> Path:  # type: ignore[type-arg]
    """The weather example (not ingested) at `root` with `sections` merged into tsops.yaml."""
    from tsops.scaffold import init_example

    init_example(root, "weather")
    raw = yaml.safe_load((root / "tsops.yaml").read_text())
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    (root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def test_wrong_database_password_fails_fast_naming_the_service(postgres_server, tmp_path: Path) -> None:
    import time

    postgres_server.create_database("faults_wrong_pw")
    uri = (
        f"postgresql://{postgres_server.user}:not-the-password@{postgres_server.host}:"
        f"{postgres_server.port}/faults_wrong_pw"
    )
    root = _project_with(tmp_path / "proj", tracking={"uri": uri})
    started = time.monotonic()
    out = run_cli("status", "--project", str(root), timeout=120)
    took = time.monotonic() - started
    assert out.returncode == 2, out.stderr
    assert "MLflow tracking database" in out.stderr and "password authentication failed" in out.stderr
    assert "Traceback" not in out.stderr and "not-the-password" not in out.stderr + out.stdout
    assert took < 20  # one attempt, not startup.wait_s of retries (it was ~106 s)


def test_unreachable_database_is_retried_then_exit_3(tmp_path: Path) -> None:
    from servers import free_port

    uri = f"postgresql://u:p@127.0.0.1:{free_port()}/nothing"
    startup = {"wait_s": 2, "retry_every_s": 0.5}
    root = _project_with(tmp_path / "proj", tracking={"uri": uri}, startup=startup)
    out = run_cli("status", "--project", str(root), timeout=120)
    assert out.returncode == 3, out.stderr
    assert "MLflow tracking database" in out.stderr and "after 2 s" in out.stderr
    assert "waiting for the MLflow tracking database" in out.stderr  # it was retried
    assert "Traceback" not in out.stderr


def test_documented_postgresql_tracking_uri_works_with_psycopg2_only(postgres_server, tmp_path: Path) -> None:
    """`postgresql://` as docs/configuration.md shows it, on an install without psycopg 3 (a
    stand-in package that cannot be imported hides the one this environment may have)."""
    postgres_server.create_database("faults_tracking")
    uri = (
        f"postgresql://{postgres_server.user}:{postgres_server.password}@{postgres_server.host}:"
        f"{postgres_server.port}/faults_tracking"
    )
    hide = tmp_path / "no-psycopg3" / "psycopg"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg'\")\n")
    root = _project_with(tmp_path / "proj", tracking={"uri": uri})
    env = {"PYTHONPATH": os.pathsep.join([str(hide.parent), os.environ.get("PYTHONPATH", "")])}
    out = run_cli("status", "--project", str(root), "--json", env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "psycopg" not in out.stderr
    with postgres_server.connect("faults_tracking") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM registered_models")  # MLflow made its tables there
        assert cur.fetchone()[0] == 0


# --- Ingest and training -------------------------------------------------------------------


@pytest.mark.parametrize("offline", ["file", "postgres"])
def test_reingest_keeps_what_the_stream_added_and_replace_says_what_it_drops(
    stream_project, postgres_server, tmp_path: Path, offline: str
) -> None:
    from conftest import postgres_offline, synthetic_events, write_jsonl
    from tsops.features.ingest import ingest
    from tsops.features.store import FeatureStoreClient
    from tsops.settings import Project
    from tsops.streaming.runner import run_stream

    stores = {"offline": postgres_offline(postgres_server, "reingest")} if offline == "postgres" else {}
    project = stream_project(stores=stores)
    client = FeatureStoreClient(project)
    ent = project.settings.series.entity_col
    from_file = len(client.read_offline())
    events = synthetic_events(project, 6)
    known = sorted({e[ent] for e in events})
    events.append({**events[-1], ent: "e999"})  # an entity only the stream has (a typo, say)
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'a.jsonl', events)}", monitoring=False)
    out = run_cli("ingest", "--project", str(project.root), timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"kept {len(events)} observation(s)" in out.stdout
    assert len(client.read_offline()) == from_file + len(events)  # nothing the stream added is lost
    states = client.read_states(known)
    assert {s.last_time for s in states.values()} == {pd.Timestamp(events[-1]["timestamp"])}
    # the entities' state did not move backwards: the next events continue without a gap
    more = synthetic_events(project, 2, start=project.settings.data.synthetic.periods + 6)
    source = f"file:{write_jsonl(tmp_path / 'b.jsonl', more)}"
    summary = run_stream(project, source=source, monitoring=False)
    assert summary.dead_letters == {} and summary.processed == len(more)
    result = ingest(Project.load(project.root), quiet=True, replace=True)
    assert result.merge.dropped == len(events) + len(more)
    assert result.merge.dropped_entities == sorted({e[ent] for e in events})
    after = FeatureStoreClient(project)
    assert len(after.read_offline()) == from_file
    assert after.read_states(["e999"]) == {}  # only the stream had it: no state left behind


def test_an_absurd_value_in_the_stream_is_a_dead_letter_outlier(stream_project, tmp_path: Path) -> None:
    """The plausible range the ingest derived from the history's spread (no setting needed)."""
    import json

    from conftest import synthetic_events, write_jsonl
    from tsops.streaming.runner import run_stream

    project = stream_project()
    events = synthetic_events(project, 2)
    events[3]["value"] = 1e308  # finite: it used to be accepted and then block training
    summary = run_stream(
        project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', events)}", monitoring=False
    )
    assert summary.dead_letters == {"outlier": 1} and summary.processed == len(events) - 1
    letters = [
        json.loads(line) for line in (project.state_dir / "dead_letters.jsonl").read_text().splitlines()
    ]
    assert letters[0]["error"] == "outlier" and "outside the plausible range" in letters[0]["detail"]
    assert json.loads(letters[0]["payload"])["value"] == 1e308


def test_explicit_valid_range_makes_outliers_in_parse() -> None:
    from tsops.settings import SeriesSettings
    from tsops.streaming.events import EventError, parse

    series = SeriesSettings(entity="city", time="t", target="temp", valid_min=-60, valid_max=60)
    now = pd.Timestamp("2030-01-01")
    assert parse('{"city": "a", "t": "2024-01-01T00:00", "temp": 59.5}', series, now).value == 59.5
    for value in (60.5, -61, 1e308):
        with pytest.raises(EventError) as info:
            parse(f'{{"city": "a", "t": "2024-01-01T00:00", "temp": {value}}}', series, now)
        assert info.value.kind == "outlier" and info.value.where == "temp"


def test_ingest_refuses_an_outlier_in_the_history_naming_it(tmp_path: Path) -> None:
    root = _project_with(tmp_path / "proj")
    path = root / "data" / "history.parquet"
    history = pd.read_parquet(path)
    history.loc[100, "temp"] = 1e308
    history.to_parquet(path, index=False)
    out = run_cli("ingest", "--project", str(root), timeout=300)
    assert out.returncode == 2, out.stderr
    assert "1 outlier(s) outside the plausible range" in out.stderr and "1e+308" in out.stderr
    assert f"entity {history.loc[100, 'city']!r}" in out.stderr and "Traceback" not in out.stderr
    assert not (root / ".tsops" / "offline" / "features.parquet").exists()  # nothing half-ingested


def test_training_leaves_out_an_entity_with_non_finite_features_and_says_why(
    stream_project, tmp_path: Path
) -> None:
    """With no plausible range (outlier_spread: null) an absurd value reaches the offline store:
    training leaves that one entity out (listed) instead of refusing to train at all."""
    from conftest import synthetic_events, write_jsonl
    from tsops.features.store import FeatureStoreClient
    from tsops.models import dataset
    from tsops.streaming.runner import run_stream

    project = stream_project(schema={"outlier_spread": None})
    # 60 steps per entity: the backtest's last origins (every backtest.stride steps, the last one
    # H to H + stride steps before the end) come after the value and see its overflowed statistics
    events = synthetic_events(project, 60)
    events[2 * 5 + 1]["value"] = 1e308
    poisoned = events[2 * 5 + 1]["entity_id"]
    summary = run_stream(
        project, source=f"file:{write_jsonl(tmp_path / 'e.jsonl', events)}", monitoring=False
    )
    assert summary.dead_letters == {}
    data = dataset.build(FeatureStoreClient(project), project.settings.model.horizon)
    assert list(data.left_out) == [poisoned] and "non-finite" in data.left_out[poisoned]
    assert poisoned not in set(data.train.features["entity_id"]) | set(data.test.features["entity_id"])
    assert data.train.features["entity_id"].nunique() == project.settings.data.synthetic.entities - 1


def test_a_corrupt_online_database_is_named_by_the_stream(stream_project, tmp_path: Path) -> None:
    from conftest import synthetic_events, write_jsonl

    project = stream_project()
    events = write_jsonl(tmp_path / "e.jsonl", synthetic_events(project, 2))
    (project.state_dir / "online.db").write_bytes(b"this is not a database" * 200)
    out = run_cli("stream", "--project", str(project.root), "--source", f"file:{events}", timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"{project.state_dir / 'online.db'}: the SQLite online store cannot be read" in out.stderr
    assert "Traceback" not in out.stderr


# --- Serving -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serving(trained_weather, weather_project):  # type: ignore[no-untyped-def]
    from serving_server import AppServer
    from tsops.serving.app import create_app

    running = AppServer(create_app(weather_project)).start()
    yield running
    running.stop()


def test_invocations_never_answer_a_bare_nan(serving, weather_project) -> None:
    import json

    from tsops.features.store import FeatureStoreClient

    columns = FeatureStoreClient(weather_project).features.names
    body = {"dataframe_split": {"columns": columns, "data": [[1e308] * len(columns)]}}
    with serving.client() as http:
        answer = http.post("/invocations", json=body)
    assert answer.status_code == 422, answer.text[:500]
    error = json.loads(answer.text)  # valid JSON: NaN is not
    assert error["error"] == "unprocessable" and "row 0" in error["detail"]


def test_an_enormous_entity_id_is_not_echoed_whole(serving) -> None:
    with serving.client() as http:
        answer = http.post("/forecast", json={"entities": ["x" * 200_000]})
    assert answer.status_code == 404
    assert len(answer.content) < 2_000 and "(200002 characters)" in answer.json()["detail"]


def test_the_unauthenticated_overview_shows_no_absolute_path(serving, weather_project) -> None:
    with serving.client() as http:
        answer = http.get("/ui/overview")
    assert answer.status_code == 200
    assert str(weather_project.root) not in answer.text and str(weather_project.state_dir) not in answer.text


def test_the_overview_during_a_database_outage_names_no_host_or_port(weather_project) -> None:
    from servers import free_port
    from tsops.settings import Project
    from tsops.ui.feed import DashboardFeed

    port = free_port()  # nothing listens: the monitoring database is down
    s = weather_project.settings
    url = f"postgresql://tsops:secret@127.0.0.1:{port}/monitoring"
    down = Project(
        weather_project.root,
        s.model_copy(update={"monitoring": s.monitoring.model_copy(update={"database": url})}),
    )
    feed = DashboardFeed(down)
    try:
        feed.refresh()
        shown = str(feed.overview())
    finally:
        feed.close()
    assert "monitoring" in feed.errors  # the outage is on the page ...
    assert str(port) not in shown and "127.0.0.1" not in shown and "secret" not in shown  # ... not where


# --- Projects ------------------------------------------------------------------------------


def test_after_a_sigkill_the_next_start_fails_the_run_and_removes_temporary_files(tmp_path: Path) -> None:
    import signal
    import time

    from mlflow import MlflowClient

    from conftest import TSOPS, write_synthetic_project
    from tsops.features.ingest import ingest

    project = write_synthetic_project(tmp_path / "proj")
    ingest(project, quiet=True)
    proc = subprocess.Popen(
        [*TSOPS, "train", "--quick", "--project", str(project.root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = MlflowClient(project.tracking_uri, project.tracking_uri)
    deadline = time.monotonic() + 300
    running: list = []
    while not running and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
        experiment = client.get_experiment_by_name(project.experiment)
        if experiment is not None:
            running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert running, "the training ended before its run could be seen RUNNING"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # what its writes in flight leave: the offline store's temporary file, named with its pid
    leftover = project.offline_path.with_suffix(f".parquet.{proc.pid}.{time.time_ns()}.tmp")
    leftover.write_bytes(b"half a parquet file")
    out = run_cli("status", "--project", str(project.root), timeout=300)
    assert out.returncode == 0, out.stderr
    run = client.get_run(running[0].info.run_id)
    assert run.info.status == "FAILED" and "killed" in run.data.tags["tsops.failed"]
    assert "marked 1 run(s) of killed processes FAILED" in out.stderr
    assert not leftover.exists() and "removed 1 temporary file(s)" in out.stderr


def test_a_copied_project_is_re_pointed_at_its_own_files(stream_model, tmp_path: Path) -> None:
    import shutil

    from mlflow import MlflowClient

    from tsops.features.store import FEATURE_VIEW, FeatureStoreClient
    from tsops.relocation import follow_a_move
    from tsops.settings import Project

    original = stream_model.root
    follow_a_move(stream_model)  # what any command does first: records where the state is
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)
    out = run_cli("status", "--project", str(copy), timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"made in {original} (copied or moved here)" in out.stderr
    project = Project.load(copy, environ={})
    source = FeatureStoreClient(project).store.get_feature_view(FEATURE_VIEW).batch_source
    assert source.path == str(project.offline_path)  # Feast reads the copy's offline file
    client = MlflowClient(project.tracking_uri, project.tracking_uri)
    experiment = client.get_experiment_by_name(project.experiment)
    assert experiment.artifact_location.startswith(copy.resolve().as_uri())  # new runs write here
    versions = client.search_model_versions(f"name = '{project.settings.model.name}'")
    assert versions and all(str(original) not in v.source for v in versions)
    assert follow_a_move(project) is None  # re-pointed once: the copy now records its own folder
