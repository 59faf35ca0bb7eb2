"""MLflow: logging a training, registering the model, aliases with an audit trail, loading.

Aliases: `challenger` is the latest trained model; `champion` is what serving uses. Moving
`champion` is gated (the challenger must beat it on the same backtest window) unless forced;
every move is recorded on the version (tags) and in the registered model's champion history.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
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

log = logging.getLogger("tsops.registry")


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
    except Exception as e:  # a damaged artefact (truncated weights, garbage config): name it
        detail = str(e).splitlines()[0][:300] if str(e) else ""
        raise ModelError(
            f"cannot load {uri}: its artefact is damaged ({type(e).__name__}: {detail}); "
            "promote another version (tsops promote / rollback) or train again",
            uri,
        ) from None


def load_forecaster(project: Project, alias: str = CHAMPION, version: int | None = None) -> tuple[int, Any]:
    """(version, Forecaster) for hot paths: resolved once, predicting on arrays without the
    pyfunc's per-call schema checks. Raises ModelError when the alias is not set."""
    client = connect(project)
    name = project.settings.model.name
    resolved = version or version_for_alias(client, name, alias)
    if resolved is None:
        raise ModelError(f"no version has the alias {alias!r}; run tsops train / promote", name)
    return resolved, forecaster_of(load(project, version=resolved))


def artifact_tmpdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="tsops-")


def forecaster_of(pyfunc: Any) -> Any:
    """The `Forecaster` inside a loaded tsops pyfunc model."""
    return pyfunc.unwrap_python_model().forecaster


class AliasWatcher:
    """Follows aliases of the registered model for a long-running process (serving, both stream
    engines): every `interval_s` a background thread reads the aliases `aliases()` names and,
    for each that points elsewhere than `installed(alias)`, calls `on_move(alias, version)`,
    which loads and swaps in the new version (a failure there is retried at the next check).

    One registry client, reused. A registry outage or a version that cannot be loaded never
    stops the caller: it is logged once, then once a minute while it lasts, then its end."""

    def __init__(
        self,
        project: Project,
        *,
        interval_s: float,
        installed: Callable[[str], int | None],
        on_move: Callable[[str, int], None],
        aliases: Callable[[], Iterable[str]] = lambda: (CHAMPION,),
        who: str = "watcher",
    ):
        self.project = project
        self.interval = interval_s
        self.installed = installed
        self.on_move = on_move
        self.aliases = aliases
        self.who = who
        self._client: MlflowClient | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"{who}-aliases", daemon=True)
        self._failing_since: float | None = None
        self._last_report = 0.0
        self._failures = 0

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def check(self, aliases: Iterable[str] | None = None) -> dict[str, int | None]:
        """Read the aliases now and install what moved (blocking); returns alias → version as
        the registry has it. Raises when the registry cannot be read or a version not loaded."""
        with self._lock:
            if self._client is None:
                self._client = connect(self.project)
            name = self.project.settings.model.name
            found = {a: version_for_alias(self._client, name, a) for a in (aliases or self.aliases())}
            for alias, version in found.items():
                if version is not None and version != self.installed(alias):
                    self.on_move(alias, version)
                    log.info("%s: %s v%s is now the %s", self.who, name, version, alias)
            return found

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as e:
                self._failed(e)
            else:
                self._recovered()

    def _failed(self, error: Exception) -> None:
        now = time.monotonic()
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = self._last_report = now
            log.warning("%s: cannot follow the registry's aliases: %s (retrying)", self.who, error)
        elif now - self._last_report >= OUTAGE_REPORT_EVERY_S:
            self._last_report = now
            since = now - self._failing_since
            log.warning(
                "%s: still failing after %.0f s (%d checks): %s", self.who, since, self._failures, error
            )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            since = time.monotonic() - self._failing_since
            log.warning("%s: following the registry's aliases again after %.0f s", self.who, since)
            self._failing_since, self._failures = None, 0


OUTAGE_REPORT_EVERY_S = 60.0
