"""Hot reload for stream workers, on the registry's one alias watcher (`registry.AliasWatcher`,
which serving uses too): when the `champion` alias moves, the python engine's watcher loads the
new version off the processing path and offers it; the processor swaps it in between two
micro-batches, so one micro-batch is predicted by one version, which its records name. The
Spark engine takes the new version number and restarts its query with it."""

from __future__ import annotations

import threading
from typing import Any

from tsops import registry
from tsops.settings import Project


class ChampionWatcher:
    """`take()` → the newly promoted (version, loaded value) once, or None. `load(version)`
    gives the value (the python engine: the forecaster; the Spark engine: nothing to load)."""

    def __init__(self, project: Project, version: int, interval_s: float, *, load: Any = None, who: str = ""):
        self.version = version
        self._load = load or (lambda v: registry.load_forecaster(project, version=v)[1])
        self._offer: tuple[int, Any] | None = None
        self._lock = threading.Lock()
        self.aliases = registry.AliasWatcher(
            project,
            interval_s=interval_s,
            installed=lambda alias: self.version,
            on_move=self._moved,
            who=who or "stream worker",
        )

    def start(self) -> None:
        self.aliases.start()

    def stop(self) -> None:
        self.aliases.stop()

    def take(self) -> tuple[int, Any] | None:
        with self._lock:
            offer, self._offer = self._offer, None
            return offer

    def _moved(self, alias: str, version: int) -> None:
        loaded = self._load(version)  # raises: the watcher logs it and retries at the next check
        with self._lock:
            self._offer = (version, loaded)
        self.version = version
