"""Hot reload: a background thread polls the registry for the `champion` (and, while canary
or shadow traffic is on, the `challenger`) alias; when one moves it loads the new version
off the request path and hands it to the event loop, which swaps it in with one assignment.
The old model's batcher finishes the requests it already queued, then stops."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from tsops import registry
from tsops.serving.metrics import ServingMetrics
from tsops.serving.model import ServedModel
from tsops.serving.router import Router
from tsops.settings import Project

log = logging.getLogger("tsops.serving")


class ModelWatcher:
    def __init__(
        self,
        project: Project,
        router: Router,
        loop: asyncio.AbstractEventLoop,
        metrics: ServingMetrics,
        prepare: Callable[[ServedModel], None],
        loader: Callable[[Project, int], ServedModel],
    ):
        self.project = project
        self.router = router
        self.loop = loop
        self.metrics = metrics
        self.prepare = prepare  # gives a loaded model its batcher (run on the event loop)
        self.loader = loader
        self.interval = project.settings.serving.reload_interval_s
        self._client = registry.connect(project)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def check(self, challenger: bool = False) -> dict[str, int | None]:
        """Compare the aliases with what is loaded; load and swap what moved (blocking).
        The challenger is followed when asked, while canary/shadow is on, or once loaded."""
        with self._lock:
            name = self.project.settings.model.name
            wanted = {registry.CHAMPION: registry.version_for_alias(self._client, name, "champion")}
            if challenger or self.router.wants_challenger or self.router.challenger is not None:
                wanted[registry.CHALLENGER] = registry.version_for_alias(
                    self._client, name, registry.CHALLENGER
                )
            for role, version in wanted.items():
                current = getattr(self.router, role)
                if version is None or (current is not None and current.version == version):
                    continue
                same = self.router.by_version(version)
                model = same if same is not None else self.loader(self.project, version)
                future = asyncio.run_coroutine_threadsafe(self._install(role, model), self.loop)
                future.result(timeout=60)
                log.info("serving %s v%s as %s", name, version, role)
            return {
                r: getattr(self.router, r).version if getattr(self.router, r) else None
                for r in (registry.CHAMPION, registry.CHALLENGER)
            }

    async def _install(self, role: str, model: ServedModel) -> None:
        if model.batcher is None:
            self.prepare(model)
        old: ServedModel | None = getattr(self.router, role)
        setattr(self.router, role, model)
        name = self.project.settings.model.name
        if old is not None:
            self.metrics.model_info.labels(name, str(old.version), role).set(0)
            self.metrics.reloads.labels(role).inc()
            if all(old is not m for m in self.router.loaded()) and old.batcher is not None:
                old.batcher.close()
        self.metrics.model_info.labels(name, str(model.version), role).set(1)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a registry hiccup must not stop serving; retry next time
                log.exception("model watcher: check failed; will retry")
