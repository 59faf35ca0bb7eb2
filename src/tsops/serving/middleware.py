"""ASGI middleware around every request: the body size limit (413 before the app reads an
oversize body) and per-route request metrics. Plain ASGI, not Starlette's
`BaseHTTPMiddleware`, to keep the hot path cheap."""

from __future__ import annotations

import time
from typing import Any

import orjson

from tsops.serving.errors import PayloadTooLarge
from tsops.serving.metrics import ServingMetrics

Scope = dict[str, Any]


class RequestGuard:
    def __init__(self, app: Any, metrics: ServingMetrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                await self._too_large(send_and_record)
                return
            sent = False

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: wait for disconnect

            await self.app(scope, replay, send_and_record)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)

    async def _read_body(self, scope: Scope, receive: Any) -> bytes | None:
        """The whole body, or None once it exceeds the limit (declared or actually sent)."""
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send: Any) -> None:
        error = PayloadTooLarge(
            f"request body is larger than serving.max_body_bytes ({self.max_body_bytes})", "body"
        )
        self.metrics.errors.labels(error.kind).inc()
        content = orjson.dumps(error.as_dict())
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
