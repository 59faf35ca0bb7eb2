"""The FastAPI app, composed: the serving state (models behind the router, the online store,
the watcher), the forecasting service over it, the request guard, one error format, and the
routers of `tsops.serving.routes` (MLflow scoring `/invocations`, Open Inference Protocol v2
`/v2/...`, `/forecast`, `/admin/...`, `/metrics`) and of the dashboard (`/`, `/ui/...`).

Every error is a typed `TsopsError` rendered as ``{"error", "detail", "where"}`` with a 4xx
status (503 while the online store is unreachable).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import tsops
from tsops.errors import TsopsError
from tsops.serving.errors import BadRequest, status_for
from tsops.serving.middleware import RequestGuard
from tsops.serving.routes import admin, forecast, json_response, mlflow, oip
from tsops.serving.service import ForecastService
from tsops.serving.state import ServingState
from tsops.settings import Project
from tsops.ui import routes as dashboard

log = logging.getLogger("tsops.serving")


def create_app(project: Project, *, watch: bool = True) -> FastAPI:
    """The serving app for a project; models load when the app starts (its lifespan)."""
    state = ServingState(project)
    service = ForecastService(state)
    feed = dashboard.feed_for(project, state.metrics.registry, state.loaded_versions)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start(watch=watch)
        try:
            yield
        finally:
            await state.stop()
            if feed is not None:
                await asyncio.to_thread(feed.close)

    app = FastAPI(title="tsops serve", version=tsops.__version__, description=__doc__, lifespan=lifespan)
    app.state.serving = state
    app.state.dashboard = feed
    app.add_middleware(
        RequestGuard, metrics=state.metrics, max_body_bytes=project.settings.serving.max_body_bytes
    )
    add_error_handlers(app, state)
    routers = [mlflow.router(service), forecast.router(service), admin.router(state), oip.router(service)]
    if feed is not None:
        routers.append(dashboard.router(feed, project.settings.model.horizon))
    for routes in routers:
        add_routes(app, routes)
    return app


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """A router's routes, added to the app's own list. FastAPI 0.165's `include_router` keeps
    the router as a nested matcher that every request walks through: it cost a tenth of the
    requests/s of a trivial endpoint here (GET /ping at c=64: 9,256 → 8,258 req/s; see
    docs/benchmarks.md). Our routers have no prefix, dependencies or lifespan of their own,
    so their routes are the app's routes as declared."""
    app.router.routes.extend(router.routes)


def add_error_handlers(app: FastAPI, state: ServingState) -> None:
    """One error body for every failure: typed errors, invalid requests, unknown routes, bugs."""

    def error_response(error: TsopsError) -> Response:
        state.metrics.errors.labels(error.kind).inc()
        return json_response(error.as_dict(), status_for(error))

    @app.exception_handler(TsopsError)
    async def typed_error(request: Request, error: TsopsError) -> Response:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        response = error_response(BadRequest(str(first.get("msg", "invalid request")), where))
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


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` with several workers: the project from TSOPS_PROJECT_DIR."""
    return create_app(Project.load(os.environ.get("TSOPS_PROJECT_DIR")))
