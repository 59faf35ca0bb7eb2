"""The dashboard's routes on the serving app: the page at `/`, JSON under `/ui/`, and the live
feed `/ui/events` (Server-Sent Events). Every read of files or stores runs in a worker thread
(the feed's own, or the threadpool for a first read), never on the event loop that serves
predictions. The page and the event stream are left out of the OpenAPI schema.

No `from __future__ import annotations` here: FastAPI must see the `step` bound (the model's
horizon, a local) when the routes are declared."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tsops.errors import NotFound
from tsops.settings import Project
from tsops.ui.feed import DashboardFeed

PUSH_CHECK_S = 0.25  # how often an open event stream looks for a new version of the data
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
# An event stream ends after this long with a `bye` event and the page reconnects at once: a
# server shutting down waits for open responses, and an endless one would hold it up.
STREAM_LIFETIME_S = 20.0


def page() -> bytes:
    return resources.files("tsops.ui").joinpath("static/index.html").read_bytes()


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), 200, media_type="application/json")


def feed_for(
    project: Project, serving_metrics: Any, loaded: Callable[[], dict[str, int | None]]
) -> DashboardFeed | None:
    """The dashboard's data for a serving app (None when `serving.dashboard.enabled` is false):
    `serving_metrics` is the app's Prometheus registry, `loaded()` the versions it serves by role."""
    if not project.settings.serving.dashboard.enabled:
        return None
    return DashboardFeed(project, serving_metrics=serving_metrics, loaded=loaded)


def router(feed: DashboardFeed, horizon: int) -> APIRouter:
    """The dashboard's routes over its feed."""
    html = page()
    ui = APIRouter()

    async def ready() -> None:
        feed.touch()
        if feed.refreshed_at is None:
            await run_in_threadpool(feed.ensure_fresh)

    def entity_or_404(entity: str, step: int) -> dict[str, Any]:
        data = feed.entity(entity, step)
        if data is None:
            raise NotFound(f"the dashboard holds no actuals or forecasts of {entity!r}", "entity")
        return data

    @ui.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @ui.get("/ui/overview", tags=["dashboard"])
    async def overview() -> Response:
        """Request latency, stream throughput and dead letters, model versions and champion
        moves, decisions, online accuracy and drift: everything but the per-entity chart."""
        await ready()
        return _json(await run_in_threadpool(feed.overview))

    @ui.get("/ui/entities", tags=["dashboard"])
    async def entities() -> Response:
        """The entities the dashboard holds actuals or forecasts of."""
        await ready()
        return _json({"entities": feed.entities()})

    @ui.get("/ui/entity/{entity}", tags=["dashboard"])
    async def entity(entity: str, step: Annotated[int, Query(ge=1, le=horizon)] = 1) -> Response:
        """One entity's actuals, the forecasts made `step` steps before each target time, the
        latest forecasts' horizons (the fan) and a band around the latest one."""
        await ready()
        return _json(await run_in_threadpool(entity_or_404, entity, step))

    @ui.get("/ui/events", include_in_schema=False)
    async def events(
        request: Request, entity: str | None = None, step: Annotated[int, Query(ge=1, le=horizon)] = 1
    ) -> StreamingResponse:
        """`text/event-stream`: an `update` event with the overview, the chosen entity's chart
        data (default: the first entity) and, when it changed, the entity list; sent at once and
        again whenever the data changes (the feed reads its sources every `refresh_s`)."""
        await ready()
        return StreamingResponse(
            _updates(request, feed, entity, step),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return ui


async def _updates(
    request: Request, feed: DashboardFeed, entity: str | None, step: int
) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    sent_version, sent_entities = -1, None
    quiet = 0.0
    ends = time.monotonic() + STREAM_LIFETIME_S
    while not await request.is_disconnected():
        if time.monotonic() > ends:
            yield b"event: bye\ndata: {}\n\n"
            return
        feed.touch()
        if feed.version != sent_version:
            sent_version = feed.version
            body, sent_entities = await run_in_threadpool(_update, feed, entity, step, sent_entities)
            yield b"event: update\ndata: " + body + b"\n\n"
            quiet = 0.0
        elif quiet >= KEEPALIVE_S:
            yield b": keepalive\n\n"
            quiet = 0.0
        await asyncio.sleep(PUSH_CHECK_S)
        quiet += PUSH_CHECK_S


def _update(
    feed: DashboardFeed, entity: str | None, step: int, sent: list[str] | None
) -> tuple[bytes, list[str]]:
    names = feed.entities()
    chosen = entity if entity is not None else (names[0] if names else None)
    overview, data = feed.rendered(chosen, step)
    body: dict[str, Any] = {
        "overview": orjson.Fragment(overview),
        "entity": orjson.Fragment(data),
        "selected": chosen,
    }
    if names is not sent and names != sent:  # the feed hands out the same list until it changes
        body["entities"] = names
    return orjson.dumps(body), names
