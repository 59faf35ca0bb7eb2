"""Admin (`Authorization: Bearer <serving.admin_token>`): traffic split, reload, shadow records;
and the Prometheus `/metrics`."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from tsops.serving.routes import json_response
from tsops.serving.state import ServingState

Authorization = Annotated[str | None, Header()]


class TrafficSplit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    canary_percent: float = Field(ge=0.0, le=100.0)
    shadow: bool = False


def router(state: ServingState) -> APIRouter:
    routes = APIRouter(tags=["admin"])

    @routes.get("/admin/traffic")
    async def get_traffic(authorization: Authorization = None) -> Response:
        state.authorize(authorization)
        return json_response(state.router.traffic())

    @routes.put("/admin/traffic")
    async def set_traffic(split: TrafficSplit, authorization: Authorization = None) -> Response:
        """Change the canary share and shadow mirroring at run time (loads the challenger)."""
        state.authorize(authorization)
        assert state.watcher is not None
        if split.canary_percent > 0 or split.shadow:
            await asyncio.to_thread(state.watcher.check, True)
        state.router.set_traffic(split.canary_percent, split.shadow)
        return json_response(state.router.traffic())

    @routes.post("/admin/reload")
    async def reload(authorization: Authorization = None) -> Response:
        """Check the registry aliases now instead of at the next poll."""
        state.authorize(authorization)
        assert state.watcher is not None
        return json_response(await asyncio.to_thread(state.watcher.check))

    @routes.get("/admin/shadow")
    async def shadow_records(authorization: Authorization = None) -> Response:
        """The last challenger outputs recorded in shadow mode."""
        state.authorize(authorization)
        return json_response({"records": list(state.router.shadow_records)})

    @routes.get("/metrics", tags=["metrics"])
    async def metrics() -> Response:
        return Response(state.metrics.render(), 200, media_type="text/plain; version=0.0.4")

    return routes
