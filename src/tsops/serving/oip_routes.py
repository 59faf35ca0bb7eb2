"""Open Inference Protocol v2 routes (KServe / Triton REST), on top of `codecs.oip`."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

import tsops
from tsops.errors import NotFound
from tsops.serving.codecs import oip
from tsops.serving.model import ServedModel
from tsops.serving.state import ServingState

JSON = "application/json"
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


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type=JSON)


def add(app: FastAPI, state: ServingState) -> None:
    def model_named(name: str, version: str | None = None) -> ServedModel:
        if name != state.model_name:
            raise NotFound(f"unknown model {name!r}; this server serves {state.model_name!r}", name)
        if version is None:
            return state.router.primary()
        found = state.router.by_version(int(version)) if version.isdigit() else None
        if found is None:
            loaded = [m.version for m in state.router.loaded()]
            raise NotFound(f"version {version!r} is not loaded (loaded: {loaded})", version)
        return found

    @app.get("/v2", tags=["oip"])
    async def server_metadata() -> Response:
        return _json({"name": "tsops", "version": tsops.__version__, "extensions": ["binary_tensor_data"]})

    @app.get("/v2/health/live", tags=["oip"])
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready", tags=["oip"])
    async def ready() -> Response:
        ok = state.router.champion is not None
        return _json({"ready": ok}, 200 if ok else 503)

    @app.get("/v2/models/{name}", tags=["oip"])
    @app.get("/v2/models/{name}/versions/{version}", tags=["oip"])
    async def model_metadata(name: str, version: str | None = None) -> Response:
        model = model_named(name, version)
        versions = [m.version for m in state.router.loaded()]
        levels = [f"{lv:g}" for lv in model.forecaster.cfg.interval_levels]
        return _json(oip.model_metadata(name, versions, model.columns, model.horizon, levels))

    @app.get("/v2/models/{name}/ready", tags=["oip"])
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["oip"])
    async def model_ready(name: str, version: str | None = None) -> Response:
        model_named(name, version)
        return _json({"name": name, "ready": True})

    @app.post("/v2/models/{name}/infer", openapi_extra=INFER_BODY, tags=["oip"])
    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY, tags=["oip"])
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        """Inference; the unversioned route follows canary routing, a version pins it."""
        named = model_named(name, version)  # 404 for an unknown model or version
        model, role = state.router.choose(named.version if version is not None else None)
        header_length = request.headers.get(oip.HEADER_LENGTH)
        decoded = oip.decode(await request.body(), header_length, model.columns)
        routed = await state.router.predict(model, role, decoded.matrix)
        extra = oip.interval_outputs(routed.model.intervals(decoded.matrix, routed.yhat))
        body, headers = oip.encode(
            routed.yhat,
            name,
            routed.model.version,
            decoded.id,
            decoded.binary_output,
            extra,
            decoded.outputs,
        )
        headers["X-Model-Version"] = str(routed.model.version)
        media = "application/octet-stream" if decoded.binary_output else JSON
        return Response(body, 200, headers=headers, media_type=media)
