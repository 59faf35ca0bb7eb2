"""Hot reload for stream workers: a background thread polls the registry's `champion` alias;
when it moves, it loads the new version off the processing path and offers it, and the
processor swaps it in between two micro-batches (so one micro-batch is predicted by one
version, which its records name)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from tsops import registry
from tsops.settings import Project

log = logging.getLogger("tsops.streaming")


class ChampionCheck:
    """Whether the registry's `champion` alias moved away from `version`: the new version, or
    None when it did not (or the registry is away: that must not stop a stream). One client,
    reused by every check."""

    def __init__(self, project: Project, version: int):
        self.project = project
        self.version = version
        self._client: Any = None

    def moved(self) -> int | None:
        try:
            if self._client is None:
                self._client = registry.connect(self.project)
            name = self.project.settings.model.name
            version = registry.version_for_alias(self._client, name, registry.CHAMPION)
        except Exception as e:
            log.warning("stream worker: champion check failed: %s", e)
            return None
        if version is None or version == self.version:
            return None
        return version


class ChampionWatcher:
    def __init__(self, project: Project, version: int, interval_s: float):
        self.project = project
        self.check = ChampionCheck(project, version)
        self.interval = interval_s
        self._offer: tuple[int, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="champion-watcher", daemon=True)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def take(self) -> tuple[int, Any] | None:
        """The newly loaded (version, forecaster), once; None when the champion did not move."""
        with self._lock:
            offer, self._offer = self._offer, None
            return offer

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            version = self.check.moved()
            if version is None:
                continue
            try:
                loaded_version, forecaster = registry.load_forecaster(self.project, version=version)
            except Exception as e:  # tried again at the next interval
                log.warning("stream worker: loading champion v%s failed: %s", version, e)
                continue
            with self._lock:
                self._offer = (loaded_version, forecaster)
            self.check.version = loaded_version
            log.info("stream worker: champion moved to v%s", loaded_version)
