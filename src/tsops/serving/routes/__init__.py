"""The serving app's routes, one module per protocol, each a FastAPI `APIRouter` built over the
forecasting service (`router(service)`): `mlflow` (MLflow scoring), `oip` (Open Inference
Protocol v2), `forecast` (by entity), `admin`, `metrics`; the dashboard's are
`tsops.ui.routes`. `tsops.serving.app.create_app` only composes them."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=JSON)
