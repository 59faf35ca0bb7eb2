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
    run_stream(project, source=f"file:{write_jsonl(tmp_path / 'a.jsonl', events)}", monitoring=False)
    out = run_cli("ingest", "--project", str(project.root), timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"kept {len(events)} observation(s)" in out.stdout
    assert len(client.read_offline()) == from_file + len(events)  # nothing the stream added is lost
    states = client.read_states(sorted({e[ent] for e in events}))
    assert {s.last_time for s in states.values()} == {pd.Timestamp(events[-1]["timestamp"])}
    # the entities' state did not move backwards: the next events continue without a gap
    more = synthetic_events(project, 2, start=project.settings.data.synthetic.periods + 6)
    source = f"file:{write_jsonl(tmp_path / 'b.jsonl', more)}"
    summary = run_stream(project, source=source, monitoring=False)
    assert summary.dead_letters == {} and summary.processed == len(more)
    result = ingest(Project.load(project.root), quiet=True, replace=True)
    assert result.merge.dropped == len(events) + len(more)
    assert result.merge.dropped_entities == sorted({e[ent] for e in events})
    assert len(FeatureStoreClient(project).read_offline()) == from_file
