"""The forecasting service behind every protocol's routes: it chooses the model (champion,
canary or a pinned version, through the router, which batches per model), predicts, and
shapes the answer each protocol returns. Routes (`tsops.serving.routes`) only decode the
HTTP request, call one method here and wrap the result in a response.

MLServer's split: `rest/endpoints.py` delegating to `handlers/dataplane.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tsops
from tsops.errors import NotFound
from tsops.serving.codecs import mlflow as mlflow_codec
from tsops.serving.codecs import oip
from tsops.serving.errors import BadRequest
from tsops.serving.model import ServedModel
from tsops.serving.router import Routed
from tsops.serving.state import ServingState

MAX_ENTITIES = 1000


@dataclass
class Answer:
    """A protocol's body with the model that produced it."""

    body: Any
    routed: Routed
    headers: dict[str, str]
    media_type: str = "application/json"

    @property
    def model_headers(self) -> dict[str, str]:
        return {
            "X-Model-Name": self.routed.model.name,
            "X-Model-Version": str(self.routed.model.version),
            "X-Model-Role": self.routed.role,
            **self.headers,
        }


class ForecastService:
    def __init__(self, state: ServingState):
        self.state = state
        self.router = state.router

    # -- MLflow scoring --------------------------------------------------------------------

    async def invocations(self, body: bytes, content_type: str | None) -> Answer:
        """MLflow's scoring protocol: the same body `mlflow models serve` returns."""
        model, role = self.router.choose()
        matrix = mlflow_codec.decode(body, content_type, model.columns)
        routed = await self.router.predict(model, role, matrix)
        return Answer(mlflow_codec.encode(routed.yhat, routed.model.outputs), routed, {})

    # -- forecast by entity ----------------------------------------------------------------

    async def forecast(
        self, entities: list[str]
    ) -> tuple[list[dict[str, Any]], Routed, list[dict[str, Any]]]:
        """(forecasts of the entities the online store has, the routed call, per-entity errors
        for the others); NotFound only when it has none of them."""
        if not entities:
            raise BadRequest("give at least one entity", "entities")
        if len(entities) > MAX_ENTITIES:
            raise BadRequest(f"at most {MAX_ENTITIES} entities per request", "entities")
        online = self.state.online_features()
        model, role = self.router.choose()
        rows = online.read(entities, model.columns)
        routed = await self.router.predict(model, role, rows.matrix)
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

    async def forecast_one(self, entity: str) -> Answer:
        out, routed, _ = await self.forecast([entity])
        return Answer({**self._model_fields(routed), **out[0]}, routed, {})

    async def forecast_many(self, entities: list[str]) -> Answer:
        out, routed, errors = await self.forecast(entities)
        body = {**self._model_fields(routed), "forecasts": out, **({"errors": errors} if errors else {})}
        return Answer(body, routed, {})

    @staticmethod
    def _model_fields(routed: Routed) -> dict[str, Any]:
        return {"model": routed.model.name, "version": routed.model.version, "role": routed.role}

    # -- Open Inference Protocol v2 --------------------------------------------------------

    def model_named(self, name: str, version: str | None = None) -> ServedModel:
        """The loaded model an OIP path names (404 for another model or a version not loaded)."""
        if name != self.state.model_name:
            raise NotFound(f"unknown model {name!r}; this server serves {self.state.model_name!r}", name)
        if version is None:
            return self.router.primary()
        found = self.router.by_version(int(version)) if version.isdigit() else None
        if found is None:
            loaded = [m.version for m in self.router.loaded()]
            raise NotFound(f"version {version!r} is not loaded (loaded: {loaded})", version)
        return found

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "tsops", "version": tsops.__version__, "extensions": ["binary_tensor_data"]}

    def ready(self) -> bool:
        return self.router.champion is not None

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.model_named(name, version)
        versions = [m.version for m in self.router.loaded()]
        levels = [f"{lv:g}" for lv in model.forecaster.cfg.interval_levels]
        return oip.model_metadata(name, versions, model.columns, model.horizon, levels)

    async def infer(self, name: str, version: str | None, body: bytes, header_length: str | None) -> Answer:
        """OIP inference; the unversioned path follows canary routing, a version pins it.
        The answer's body is bytes (JSON, or binary tensor data when asked)."""
        named = self.model_named(name, version)  # 404 for an unknown model or version
        model, role = self.router.choose(named.version if version is not None else None)
        decoded = oip.decode(body, header_length, model.columns)
        routed = await self.router.predict(model, role, decoded.matrix)
        extra = oip.interval_outputs(routed.model.intervals(decoded.matrix, routed.yhat))
        encoded, headers = oip.encode(
            routed.yhat, name, routed.model.version, decoded.id, decoded.binary_output, extra, decoded.outputs
        )
        headers["X-Model-Version"] = str(routed.model.version)
        media = "application/octet-stream" if decoded.binary_output else "application/json"
        return Answer(encoded, routed, headers, media)
