"""What one server holds: settings, loaded models behind the router, the online store and
the watcher. Built once at start-up; request handlers only read it."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from tsops import heap, registry
from tsops.errors import StoreError
from tsops.features.online import OnlineFeatures
from tsops.secrets import resolve_text
from tsops.serving import model as served_model
from tsops.serving.errors import Forbidden, NotReady, Unauthorized
from tsops.serving.metrics import ServingMetrics
from tsops.serving.model import ServedModel
from tsops.serving.router import Router
from tsops.serving.watcher import ModelWatcher
from tsops.settings import Project


@dataclass
class ServingState:
    project: Project
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    router: Router = field(init=False)
    online: OnlineFeatures | None = None
    online_error: StoreError | None = None
    watcher: ModelWatcher | None = None

    def __post_init__(self) -> None:
        s = self.project.settings.serving
        self.router = Router(self.metrics, s.canary_percent, s.shadow)

    @property
    def model_name(self) -> str:
        return self.project.settings.model.name

    def loaded_versions(self) -> dict[str, int | None]:
        """The version loaded per role (the dashboard shows them)."""
        router = self.router
        return {
            role: (model.version if model is not None else None)
            for role, model in (("champion", router.champion), ("challenger", router.challenger))
        }

    def prepare(self, model: ServedModel) -> None:
        s = self.project.settings.serving
        model.start_batching(s.max_batch_size, s.max_batch_wait_ms / 1000.0, self.metrics)

    async def start(self, watch: bool = True) -> None:
        """Resolve and load models and the online store once; start the watcher."""
        loop = asyncio.get_running_loop()
        self.watcher = ModelWatcher(
            self.project, self.router, loop, self.metrics, self.prepare, served_model.load
        )
        await asyncio.to_thread(self.watcher.check)
        if self.router.champion is None:
            raise NotReady(
                f"no version of {self.model_name!r} has the alias {registry.CHAMPION!r}; "
                "run `tsops train` and `tsops promote`",
                self.model_name,
            )
        try:
            self.online = await asyncio.to_thread(OnlineFeatures, self.project)
        except StoreError as e:  # /invocations and OIP still work without the online store
            self.online_error = e
        # Start-up objects live as long as the server: out of the collector's scans, which
        # otherwise show up as multi-millisecond tail latency (tsops.heap).
        heap.settle()
        if watch:
            self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)
        for model in self.router.loaded():
            if model.batcher is not None:
                model.batcher.close()

    def online_features(self) -> OnlineFeatures:
        if self.online is None:
            raise self.online_error or NotReady("the online store is not open yet", "online")
        return self.online

    def authorize(self, header: str | None) -> None:
        """Admin endpoints need `Authorization: Bearer <serving.admin_token>`."""
        configured = self.project.settings.serving.admin_token
        # `${NAME}`: the token is a secret from the environment or a mounted file (NAME_FILE)
        token = resolve_text(configured, "serving.admin_token") if configured else None
        if not token:
            raise Forbidden(
                "admin endpoints are disabled: set serving.admin_token (or TSOPS_SERVING__ADMIN_TOKEN)",
                "serving.admin_token",
            )
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("send Authorization: Bearer <admin token>", "Authorization")
