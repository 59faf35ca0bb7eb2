"""MLflow's scoring protocol: `/invocations`, `/ping`, `/health`, `/version`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

import tsops
from tsops.serving.routes import JSON
from tsops.serving.service import ForecastService

INVOCATIONS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "description": "exactly one of the four MLflow input formats",
                    "properties": {
                        "dataframe_split": {
                            "type": "object",
                            "properties": {
                                "columns": {"type": "array", "items": {"type": "string"}},
                                "data": {"type": "array", "items": {"type": "array"}},
                            },
                        },
                        "dataframe_records": {"type": "array", "items": {"type": "object"}},
                        "instances": {"type": "array"},
                        "inputs": {},
                    },
                }
            },
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


def router(service: ForecastService) -> APIRouter:
    routes = APIRouter(tags=["mlflow"])

    @routes.post("/invocations", openapi_extra=INVOCATIONS_BODY)
    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol; the body equals `mlflow models serve`'s for this model.
        The version that answered is in the `X-Model-Version` header."""
        content_type = request.headers.get("content-type")  # read directly: cheaper than Header()
        answer = await service.invocations(await request.body(), content_type)
        return Response(answer.body, 200, headers=answer.model_headers, media_type=JSON)

    @routes.get("/ping")
    @routes.get("/health")
    async def ping() -> Response:
        return Response("\n", 200, media_type=JSON)

    @routes.get("/version")
    async def version() -> Response:
        return Response(tsops.__version__, 200, media_type=JSON)

    return routes
