"""`tsops serve`: check the bind address, then run the app under uvicorn."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from tsops.errors import ConfigError
from tsops.settings import Project


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, admin_token: str | None) -> None:
    """Refuse to expose the server beyond this machine without an admin token."""
    if not is_loopback(host) and not admin_token:
        raise ConfigError(
            f"refusing to bind {host} (not loopback) without an admin token; set "
            "serving.admin_token or TSOPS_SERVING__ADMIN_TOKEN, or bind 127.0.0.1",
            "serving.host",
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
        uvicorn.run("tsops.serving.app:app_from_env", factory=True, workers=worker_count, **common)
        return
    from tsops.serving.app import create_app

    uvicorn.run(create_app(loaded), **common)
