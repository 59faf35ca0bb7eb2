"""A project folder that was copied or moved (`cp -a P Q`): Feast's registry and MLflow's
embedded store hold absolute paths, so Q would read P's offline file and write into P's
artefact folder. `.tsops/root` records the folder the state was made in; a command started in
another folder re-points the embedded stores there (and says so) before doing anything else.

Only the embedded defaults carry such paths: a project with a database registry, a PostgreSQL
offline store or a tracking server is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

from tsops.settings import Project

log = logging.getLogger("tsops.relocation")

MARKER = "root"
# MLflow's columns that hold artefact locations (as file:// URIs or plain paths)
_MLFLOW_COLUMNS = {
    "experiments": ["artifact_location"],
    "runs": ["artifact_uri"],
    "model_versions": ["source", "storage_location"],
    "logged_models": ["artifact_location"],
}


def recorded_root(project: Project) -> Path | None:
    try:
        return Path((project.state_dir / MARKER).read_text().strip())
    except OSError:
        return None


def follow_a_move(project: Project) -> Path | None:
    """Re-point the embedded stores when the project's state was made in another folder; the
    old folder if it did. Records the current folder either way (once the state exists)."""
    if not project.state_dir.is_dir():
        return None
    old = recorded_root(project)
    if old == project.root:
        return None
    if old is not None and _embedded(project):
        _repoint_mlflow(project, old)
        _repoint_feast(project)
        log.warning(
            "this project's state was made in %s (copied or moved here): re-pointed its Feast "
            "registry and MLflow store at %s",
            old,
            project.root,
        )
    with contextlib.suppress(OSError):  # a read-only image (cluster mode) keeps no marker
        (project.state_dir / MARKER).write_text(f"{project.root}\n")
    return old


def _embedded(project: Project) -> bool:
    stores = project.settings.stores
    return stores.registry_url is None and stores.offline.type == "file"


def _repoint_mlflow(project: Project, old: Path) -> None:
    database = project.state_dir / "mlflow.db"
    if project.settings.tracking.uri is not None or not database.exists():
        return  # a tracking server or database elsewhere holds no path of this folder
    pairs = [(old.as_uri(), project.root.as_uri()), (str(old), str(project.root))]
    with sqlite3.connect(database) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, columns in _MLFLOW_COLUMNS.items():
            if table not in tables:
                continue
            present = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for column in (c for c in columns if c in present):
                for before, after in pairs:
                    conn.execute(
                        f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE instr({column}, ?) = 1",
                        (before, after, before),
                    )


def _repoint_feast(project: Project) -> None:
    from tsops.features.store import FeatureStoreClient

    client = FeatureStoreClient(project)  # writes feature_repo/ for this folder
    if client.ingested_hash() is not None:
        client.apply()  # the sources registered with this folder's paths
