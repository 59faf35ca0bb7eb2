"""Open Inference Protocol v2 routes (KServe / Triton REST), on top of `codecs.oip`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tsops.serving.codecs import oip
from tsops.serving.routes import JSON, json_response
from tsops.serving.service import ForecastService

INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "data": {"type": "array"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object"}},
                        "parameters": {"type": "object"},
                    },
                }
            }
        },
    }
}


def router(service: ForecastService) -> APIRouter:
    routes = APIRouter(tags=["oip"])

    @routes.get("/v2")
    async def server_metadata() -> Response:
        return json_response(service.server_metadata())

    @routes.get("/v2/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @routes.get("/v2/health/ready")
    async def ready() -> Response:
        ok = service.ready()
        return json_response({"ready": ok}, 200 if ok else 503)

    @routes.get("/v2/models/{name}")
    @routes.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        return json_response(service.model_metadata(name, version))

    @routes.get("/v2/models/{name}/ready")
    @routes.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        service.model_named(name, version)
        return json_response({"name": name, "ready": True})

    @routes.post("/v2/models/{name}/infer", openapi_extra=INFER_BODY)
    @routes.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        """Inference; the unversioned route follows canary routing, a version pins it."""
        header_length = request.headers.get(oip.HEADER_LENGTH)
        answer = await service.infer(name, version, await request.body(), header_length)
        return Response(answer.body, 200, headers=answer.headers, media_type=answer.media_type)

    return routes
