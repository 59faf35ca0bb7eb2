"""Canary and shadow routing between the `champion` and the `challenger`.

Canary: `canary_percent` of requests are answered by the challenger. Shadow: every request
is answered by the champion and mirrored to the challenger in the background; the
challenger's output is recorded (metrics and the last records at `/admin/shadow`), never
returned. Models are swapped by assigning one attribute, so a request sees either the old
or the new model, never a mix.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsops.errors import NotFound
from tsops.serving.errors import Conflict, NotReady
from tsops.serving.metrics import ServingMetrics
from tsops.serving.model import ServedModel

CHAMPION, CANARY, SHADOW = "champion", "canary", "shadow"


@dataclass
class Routed:
    yhat: np.ndarray
    model: ServedModel
    role: str  # champion or canary


class Router:
    def __init__(self, metrics: ServingMetrics, canary_percent: float = 0.0, shadow: bool = False):
        self.metrics = metrics
        self.champion: ServedModel | None = None
        self.challenger: ServedModel | None = None
        self.canary_percent = canary_percent
        self.shadow = shadow
        self.shadow_records: deque[dict[str, Any]] = deque(maxlen=100)
        self._random = random.Random()
        self._background: set[asyncio.Task[None]] = set()
        metrics.canary_percent.set(canary_percent)

    @property
    def wants_challenger(self) -> bool:
        return self.canary_percent > 0 or self.shadow

    def set_traffic(self, canary_percent: float, shadow: bool) -> None:
        if (canary_percent > 0 or shadow) and self.challenger is None:
            raise Conflict("no challenger is loaded: train one (`tsops train`) first", "challenger")
        self.canary_percent, self.shadow = canary_percent, shadow
        self.metrics.canary_percent.set(canary_percent)

    def traffic(self) -> dict[str, Any]:
        return {
            "canary_percent": self.canary_percent,
            "shadow": self.shadow,
            "champion": self.champion.version if self.champion else None,
            "challenger": self.challenger.version if self.challenger else None,
        }

    def loaded(self) -> list[ServedModel]:
        return [m for m in (self.champion, self.challenger) if m is not None]

    def by_version(self, version: int) -> ServedModel | None:
        return next((m for m in self.loaded() if m.version == version), None)

    def primary(self) -> ServedModel:
        if self.champion is None:
            raise NotReady("no champion model is loaded yet", "champion")
        return self.champion

    def choose(self, version: int | None = None) -> tuple[ServedModel, str]:
        """Pick the model for one request: a pinned (loaded) version, else the canary split,
        else the champion. Callers decode the request with the chosen model's columns."""
        if version is not None:
            pinned = self.by_version(version)
            if pinned is None:
                loaded = [m.version for m in self.loaded()]
                raise NotFound(f"version {version} is not loaded (loaded: {loaded})", str(version))
            return pinned, CHAMPION if pinned is self.champion else CANARY
        champion = self.primary()
        challenger = self.challenger
        if (
            challenger is not None
            and self.canary_percent > 0
            and self._random.random() * 100 < self.canary_percent
        ):
            return challenger, CANARY
        return champion, CHAMPION

    async def predict(self, model: ServedModel, role: str, matrix: np.ndarray) -> Routed:
        """Answer with the chosen model; in shadow mode also mirror the champion's requests
        to the challenger (when both read the same feature columns)."""
        routed = await self._run(model, matrix, role)
        challenger = self.challenger
        if (
            self.shadow
            and role == CHAMPION
            and challenger is not None
            and challenger is not model
            and challenger.columns == model.columns
        ):
            task = asyncio.get_running_loop().create_task(self._mirror(challenger, matrix, routed))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return routed

    async def _run(self, model: ServedModel, matrix: np.ndarray, role: str) -> Routed:
        yhat = await model.predict(matrix)
        self.metrics.predictions.labels(str(model.version), role).inc(len(matrix))
        return Routed(yhat, model, role)

    async def _mirror(self, challenger: ServedModel, matrix: np.ndarray, served: Routed) -> None:
        try:
            yhat = await challenger.predict(matrix)
        except Exception as e:  # a failing shadow must never affect the served answer
            self.shadow_records.append({"time": time.time(), "error": repr(e)})
            return
        diff = float(np.mean(np.abs(yhat - served.yhat)))
        champion, version = str(served.model.version), str(challenger.version)
        self.metrics.predictions.labels(version, SHADOW).inc(len(matrix))
        self.metrics.shadow_difference.labels(champion, version).observe(diff)
        self.shadow_records.append(
            {
                "time": time.time(),
                "champion": served.model.version,
                "challenger": challenger.version,
                "rows": len(matrix),
                "mean_abs_difference": diff,
                "challenger_yhat": yhat.tolist(),
            }
        )
