"""The FastAPI app: MLflow scoring (`/invocations`), Open Inference Protocol v2 (`/v2/...`),
forecast by entity (`/forecast`), admin (`/admin/...`), `/metrics`, `/docs` and the live
dashboard (`/`, `/ui/...`).

Handlers decode with the codecs, predict through the router (adaptive batching per model)
and encode; every error is a typed `TsopsError` rendered as ``{"error", "detail", "where"}``
with a 4xx status (503 while the online store is unreachable).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import tsops
from tsops.errors import TsopsError
from tsops.serving import oip_routes
from tsops.serving.codecs import mlflow as mlflow_codec
from tsops.serving.errors import BadRequest, status_for
from tsops.serving.middleware import RequestGuard
from tsops.serving.state import ServingState
from tsops.settings import Project
from tsops.ui import routes as ui_routes

log = logging.getLogger("tsops.serving")
JSON = "application/json"

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


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entities: list[str] = Field(min_length=1, max_length=1000)


class TrafficSplit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    canary_percent: float = Field(ge=0.0, le=100.0)
    shadow: bool = False


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=JSON)


def error_response(error: TsopsError, state: ServingState) -> Response:
    state.metrics.errors.labels(error.kind).inc()
    return json_response(error.as_dict(), status_for(error))


def model_headers(routed: Any) -> dict[str, str]:
    return {
        "X-Model-Name": routed.model.name,
        "X-Model-Version": str(routed.model.version),
        "X-Model-Role": routed.role,
    }


def create_app(project: Project, *, watch: bool = True) -> FastAPI:
    """The serving app for a project; models load when the app starts (its lifespan)."""
    state = ServingState(project)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start(watch=watch)
        try:
            yield
        finally:
            await state.stop()
            if app.state.dashboard is not None:
                await asyncio.to_thread(app.state.dashboard.close)

    app = FastAPI(
        title="tsops serve",
        version=tsops.__version__,
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.serving = state
    app.add_middleware(
        RequestGuard, metrics=state.metrics, max_body_bytes=project.settings.serving.max_body_bytes
    )

    @app.exception_handler(TsopsError)
    async def typed_error(request: Request, error: TsopsError) -> Response:
        return error_response(error, state)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        response = error_response(BadRequest(str(first.get("msg", "invalid request")), where), state)
        response.status_code = 422
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        state.metrics.errors.labels(kind).inc()
        body = {"error": kind, "detail": str(error.detail), "where": request.url.path}
        return json_response(body, error.status_code, dict(error.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        # a bug, not bad input: logged with its traceback, answered in the same body format
        log.exception("unexpected error on %s", request.url.path)
        state.metrics.errors.labels("internal_error").inc()
        body = {"error": "internal_error", "detail": type(error).__name__, "where": request.url.path}
        return json_response(body, 500)

    # --- MLflow scoring protocol -----------------------------------------------------------

    @app.post("/invocations", openapi_extra=INVOCATIONS_BODY, tags=["mlflow"])
    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol; the body equals `mlflow models serve`'s for this model.
        The version that answered is in the `X-Model-Version` header."""
        model, role = state.router.choose()
        content_type = request.headers.get("content-type")  # read directly: cheaper than Header()
        matrix = mlflow_codec.decode(await request.body(), content_type, model.columns)
        routed = await state.router.predict(model, role, matrix)
        body = mlflow_codec.encode(routed.yhat, routed.model.outputs)
        return Response(body, 200, headers=model_headers(routed), media_type=JSON)

    @app.get("/ping", tags=["mlflow"])
    @app.get("/health", tags=["mlflow"])
    async def ping() -> Response:
        return Response("\n", 200, media_type=JSON)

    @app.get("/version", tags=["mlflow"])
    async def version() -> Response:
        return Response(tsops.__version__, 200, media_type=JSON)

    # --- forecast by entity ----------------------------------------------------------------

    async def forecast(entities: list[str]) -> tuple[list[dict[str, Any]], Any, list[dict[str, Any]]]:
        """(forecasts of the entities the online store has, the routed call, per-entity errors
        for the others); NotFound only when it has none of them."""
        online = state.online_features()
        model, role = state.router.choose()
        rows = online.read(entities, model.columns)
        routed = await state.router.predict(model, role, rows.matrix)
        bounds = routed.model.intervals(rows.matrix, routed.yhat)  # {"80": (lower, upper), ...}
        out = []
        for i, (entity, origin, values) in enumerate(
            zip(rows.entities, rows.origins, routed.yhat, strict=True)
        ):
            times = online.times(origin, routed.model.horizon)
            points: list[dict[str, Any]] = [
                {"time": t, "value": v} for t, v in zip(times, values.tolist(), strict=True)
            ]
            for level, (lower, upper) in bounds.items():
                for point, lo, hi in zip(points, lower[i].tolist(), upper[i].tolist(), strict=True):
                    point[f"lower_{level}"], point[f"upper_{level}"] = lo, hi
            out.append(
                {"entity": entity, "origin": origin.isoformat().replace("+00:00", "Z"), "forecast": points}
            )
        errors = [
            {"entity": e, "error": "not_found", "detail": online.unknown_detail(e)} for e in rows.unknown
        ]
        return out, routed, errors

    @app.get("/forecast/{entity}", tags=["forecast"])
    async def forecast_entity(entity: str) -> Response:
        """The next H values of one entity from its current online features, with the
        target times, the model name and the version that answered."""
        out, routed, _ = await forecast([entity])
        body = {
            "model": routed.model.name,
            "version": routed.model.version,
            "role": routed.role,
            **out[0],
        }
        return json_response(body, headers=model_headers(routed))

    @app.post("/forecast", tags=["forecast"])
    async def forecast_many(request: ForecastRequest) -> Response:
        """Forecasts for many entities in one model call. Entities without current features are
        listed under `errors` (with close matches) while the others are answered; 404 only
        when none has."""
        out, routed, errors = await forecast(request.entities)
        body = {
            "model": routed.model.name,
            "version": routed.model.version,
            "role": routed.role,
            "forecasts": out,
            **({"errors": errors} if errors else {}),
        }
        return json_response(body, headers=model_headers(routed))

    # --- admin -----------------------------------------------------------------------------

    @app.get("/admin/traffic", tags=["admin"])
    async def get_traffic(authorization: Annotated[str | None, Header()] = None) -> Response:
        state.authorize(authorization)
        return json_response(state.router.traffic())

    @app.put("/admin/traffic", tags=["admin"])
    async def set_traffic(
        split: TrafficSplit, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        """Change the canary share and shadow mirroring at run time (loads the challenger)."""
        state.authorize(authorization)
        assert state.watcher is not None
        if split.canary_percent > 0 or split.shadow:
            await asyncio.to_thread(state.watcher.check, True)
        state.router.set_traffic(split.canary_percent, split.shadow)
        return json_response(state.router.traffic())

    @app.post("/admin/reload", tags=["admin"])
    async def reload(authorization: Annotated[str | None, Header()] = None) -> Response:
        """Check the registry aliases now instead of at the next poll."""
        state.authorize(authorization)
        assert state.watcher is not None
        return json_response(await asyncio.to_thread(state.watcher.check))

    @app.get("/admin/shadow", tags=["admin"])
    async def shadow_records(authorization: Annotated[str | None, Header()] = None) -> Response:
        """The last challenger outputs recorded in shadow mode."""
        state.authorize(authorization)
        return json_response({"records": list(state.router.shadow_records)})

    @app.get("/metrics", tags=["metrics"])
    async def metrics() -> Response:
        return Response(state.metrics.render(), 200, media_type="text/plain; version=0.0.4")

    oip_routes.add(app, state)

    def loaded() -> dict[str, int | None]:
        router = state.router
        return {
            role: (model.version if model is not None else None)
            for role, model in (("champion", router.champion), ("challenger", router.challenger))
        }

    app.state.dashboard = ui_routes.mount(app, state.project, state.metrics.registry, loaded)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` with several workers: the project from TSOPS_PROJECT_DIR."""
    return create_app(Project.load(os.environ.get("TSOPS_PROJECT_DIR")))
