"""A real uvicorn server for the serving app, on a free loopback port, in a thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import uvicorn

from servers import LOOPBACK, free_port


class AppServer:
    """`tsops.serving.app.create_app(project)` under uvicorn: `.url`, `.client()`, `.stop()`."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        config = uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self, timeout: float = 120) -> AppServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the serving app exited during start-up (see its log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the serving app did not start within {timeout:.0f}s")
            time.sleep(0.05)
        return self

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
