"""Hot reload, on the registry's one alias watcher (`registry.AliasWatcher`, which both stream
engines use too): it follows the `champion` alias (and, while canary or shadow traffic is on,
the `challenger`); when one moves, the new version is loaded off the request path and handed
to the event loop, which swaps it in with one assignment. The old model's batcher finishes
the requests it already queued, then stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tsops import registry
from tsops.serving.metrics import ServingMetrics
from tsops.serving.model import ServedModel
from tsops.serving.router import Router
from tsops.settings import Project

ROLES = (registry.CHAMPION, registry.CHALLENGER)


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
        self.aliases = registry.AliasWatcher(
            project,
            interval_s=project.settings.serving.reload_interval_s,
            installed=self._installed,
            on_move=self._load,
            aliases=self._followed,
            who="serving",
        )

    def start(self) -> None:
        self.aliases.start()

    def stop(self) -> None:
        self.aliases.stop()

    def check(self, challenger: bool = False) -> dict[str, int | None]:
        """Compare the aliases with what is loaded; load and swap what moved (blocking).
        Returns the versions loaded per role."""
        self.aliases.check(ROLES if challenger else None)
        return {r: getattr(self.router, r).version if getattr(self.router, r) else None for r in ROLES}

    def _followed(self) -> tuple[str, ...]:
        """The challenger is followed while canary/shadow is on, or once loaded."""
        router = self.router
        return ROLES if router.wants_challenger or router.challenger is not None else ROLES[:1]

    def _installed(self, role: str) -> int | None:
        model: ServedModel | None = getattr(self.router, role)
        return None if model is None else model.version

    def _load(self, role: str, version: int) -> None:
        same = self.router.by_version(version)
        model = same if same is not None else self.loader(self.project, version)
        asyncio.run_coroutine_threadsafe(self._install(role, model), self.loop).result(timeout=60)

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
