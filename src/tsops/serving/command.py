"""`tsops serve`: check the bind address, then run the app under uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tsops import registry
from tsops.errors import ConfigError, ModelError
from tsops.services import is_loopback
from tsops.settings import Project


def check_bind(host: str, admin_token: str | None) -> None:
    """Refuse to expose the server beyond this machine without an admin token."""
    if not is_loopback(host) and not admin_token:
        raise ConfigError(
            f"refusing to bind {host} (not loopback) without an admin token; set "
            "serving.admin_token or TSOPS_SERVING__ADMIN_TOKEN, or bind 127.0.0.1",
            "serving.host",
        )


def require_champion(project: Project) -> int:
    """The champion's version; refused before the server starts when there is none (uvicorn
    would otherwise print the lifespan's traceback and exit 3)."""
    name = project.settings.model.name
    version = registry.version_for_alias(registry.connect(project), name, registry.CHAMPION)
    if version is None:
        raise ModelError("no champion: run tsops train and tsops promote", f"model {name}")
    return version


def ready_message(host: str, port: int, version: int, workers: int = 1) -> str:
    """What `tsops serve` prints once it listens: where, the dashboard and the API docs."""
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}"
    extra = f", {workers} workers" if workers > 1 else ""
    return (
        f"serving champion v{version} at {url}/ (bound to {host}{extra})\n"
        f"  dashboard  {url}/\n"
        f"  API docs   {url}/docs\n"
        f"  forecast   {url}/forecast/{{entity}}\n"
        "Ctrl-C stops it."
    )


def serve(
    project: Path,
    port: int | None = None,
    workers: int | None = None,
    host: str | None = None,
) -> None:
    """Serve the project's champion over HTTP until interrupted (blocking).

    `port`, `workers` and `host` override `serving.*` in tsops.yaml. With several workers each
    process loads the models and runs its own batcher and watcher; `/metrics` is per worker.
    """
    import uvicorn

    from tsops import services

    loaded = Project.load(project)
    settings = loaded.settings.serving
    bind_host = host or settings.host
    check_bind(bind_host, settings.admin_token)
    startup = loaded.settings.startup
    services.wait_for(services.needed(loaded, "serve"), startup.wait_s, startup.retry_every_s)
    bind_port = settings.port if port is None else port
    worker_count = workers or settings.workers
    version = require_champion(loaded)
    common: dict[str, Any] = {
        "host": bind_host,
        "port": bind_port,
        "log_level": "warning",
        "access_log": False,
        # open dashboard event streams never end by themselves: cut them at shutdown
        "timeout_graceful_shutdown": 3,
    }
    if worker_count > 1:
        os.environ["TSOPS_PROJECT_DIR"] = str(loaded.root)
        announce(ready_message(bind_host, bind_port, version, worker_count))  # workers start next
        uvicorn.run("tsops.serving.app:app_from_env", factory=True, workers=worker_count, **common)
        return
    from tsops.serving.app import create_app

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:  # the lifespan ran: models and the online store are loaded
                announce(ready_message(bind_host, bind_port, version))

    server = AnnouncingServer(uvicorn.Config(create_app(loaded), **common))
    server.run()
    if not server.started:
        raise ModelError("the server did not start; see the log above", "tsops serve")


def announce(text: str) -> None:
    print(text, flush=True)
