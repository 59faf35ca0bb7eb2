"""MLflow: logging a training, registering the model, aliases with an audit trail, loading.

Aliases: `challenger` is the latest trained model; `champion` is what serving uses. Moving
`champion` is gated (the challenger must beat it on the same backtest window) unless forced;
every move is recorded on the version (tags) and in the registered model's champion history.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tsops.errors import ModelError, StoreError
from tsops.settings import Project

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "tsops.champion_history"
LEFT_OUT_TAG = "tsops.left_out_entities"  # entities a training left out, with the reason (JSON)


def connect(project: Project) -> MlflowClient:
    """Point MLflow at the project's tracking store and experiment (created on first use)."""
    if not project.tracking_server:
        project.state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(project.tracking_uri)
    mlflow.set_registry_uri(project.tracking_uri)
    client = MlflowClient(project.tracking_uri, project.tracking_uri)
    try:
        if client.get_experiment_by_name(project.experiment) is None:
            client.create_experiment(project.experiment, artifact_location=project.artifact_location)
    except MlflowException as e:
        raise StoreError(f"cannot use the MLflow tracking store: {e.message}", project.tracking_uri) from None
    mlflow.set_experiment(project.experiment)
    return client


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@dataclass
class ModelVersionInfo:
    name: str
    version: int
    aliases: list[str]
    run_id: str
    metrics: dict[str, float]
    tags: dict[str, str]
    created: datetime


def set_challenger(client: MlflowClient, name: str, version: int) -> None:
    client.set_registered_model_alias(name, CHALLENGER, str(version))


def version_for_alias(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_history(client: MlflowClient, name: str) -> list[int]:
    tags = client.get_registered_model(name).tags
    return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def move_champion(client: MlflowClient, name: str, version: int, reason: str, **audit: str) -> None:
    """Point `champion` at `version` and record why, on the version and in the history."""
    # Microseconds: a version promoted twice within one second is two promotions (the rollback
    # check judges each promotion once, by this time).
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "tsops.promoted_at", now)
    client.set_model_version_tag(name, str(version), "tsops.promotion_reason", reason)
    for key, value in audit.items():
        client.set_model_version_tag(name, str(version), f"tsops.{key}", value)
    history = champion_history(client, name)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version]))


def versions(project: Project) -> list[ModelVersionInfo]:
    """Every registered version of the project's model, newest first, with run metrics."""
    client = connect(project)
    name = project.settings.model.name
    try:
        found = client.search_model_versions(f"name='{name}'")
        alias_map = client.get_registered_model(name).aliases or {}
    except MlflowException:
        return []
    aliases_of: dict[int, list[str]] = {}
    for alias, v in alias_map.items():
        aliases_of.setdefault(int(v), []).append(alias)
    out = []
    for mv in sorted(found, key=lambda v: int(v.version), reverse=True):
        run_metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        out.append(
            ModelVersionInfo(
                name=name,
                version=int(mv.version),
                aliases=sorted(aliases_of.get(int(mv.version), [])),
                run_id=mv.run_id or "",
                metrics=dict(run_metrics),
                tags=dict(mv.tags or {}),
                created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
            )
        )
    return out


def load(project: Project, alias: str = CHAMPION, version: int | None = None) -> Any:
    """Load a version (or the version an alias points at) as an MLflow pyfunc model."""
    connect(project)
    name = project.settings.model.name
    uri = f"models:/{name}/{version}" if version else f"models:/{name}@{alias}"
    try:
        return mlflow.pyfunc.load_model(uri)
    except MlflowException as e:
        raise ModelError(f"cannot load {uri}: {e.message}", uri) from None


def load_forecaster(project: Project, alias: str = CHAMPION, version: int | None = None) -> tuple[int, Any]:
    """(version, Forecaster) for hot paths: resolved once, predicting on arrays without the
    pyfunc's per-call schema checks. Raises ModelError when the alias is not set."""
    client = connect(project)
    name = project.settings.model.name
    resolved = version or version_for_alias(client, name, alias)
    if resolved is None:
        raise ModelError(f"no version has the alias {alias!r}; run tsops train / promote", name)
    model = load(project, version=resolved)
    return resolved, model.unwrap_python_model().forecaster


def artifact_tmpdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="tsops-")
