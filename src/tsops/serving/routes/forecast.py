"""Forecast by entity: `/forecast/{entity}` and `POST /forecast`, from the online store."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from tsops.serving.routes import json_response
from tsops.serving.service import MAX_ENTITIES, ForecastService


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entities: list[str] = Field(min_length=1, max_length=MAX_ENTITIES)


def router(service: ForecastService) -> APIRouter:
    routes = APIRouter(tags=["forecast"])

    @routes.get("/forecast/{entity}")
    async def forecast_entity(entity: str) -> Response:
        """The next H values of one entity from its current online features, with the
        target times, the model name and the version that answered."""
        answer = await service.forecast_one(entity)
        return json_response(answer.body, headers=answer.model_headers)

    @routes.post("/forecast")
    async def forecast_many(request: ForecastRequest) -> Response:
        """Forecasts for many entities in one model call. Entities without current features are
        listed under `errors` (with close matches) while the others are answered; 404 only
        when none has."""
        answer = await service.forecast_many(request.entities)
        return json_response(answer.body, headers=answer.model_headers)

    return routes
