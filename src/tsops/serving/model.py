"""A registered model version loaded for serving: the forecaster, its signature's columns and
its own adaptive batcher. Loaded once (the registry is not touched on the request path)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from tsops import registry
from tsops.errors import ModelError
from tsops.models.lstm import Forecaster
from tsops.models.pyfunc import output_columns
from tsops.serving.batching import AdaptiveBatcher
from tsops.serving.metrics import ServingMetrics
from tsops.settings import Project

TORCH_THREADS = 1  # as the pyfunc (`mlflow models serve`): same kernels, same numbers


@dataclass
class ServedModel:
    name: str
    version: int
    forecaster: Forecaster
    columns: list[str]  # the signature's input columns, in order
    outputs: list[str] = field(default_factory=list)
    batcher: AdaptiveBatcher | None = None

    @property
    def horizon(self) -> int:
        return self.forecaster.cfg.horizon

    def predict_now(self, matrix: np.ndarray) -> np.ndarray:
        """Unbatched forecasts for a (rows, columns) matrix, under `torch.inference_mode()`."""
        frame = pd.DataFrame(matrix, columns=self.columns, copy=False)
        with torch.inference_mode():
            return self.forecaster.predict(frame)

    def start_batching(
        self, max_batch_size: int, max_wait_s: float, metrics: ServingMetrics
    ) -> None:
        version = str(self.version)
        histogram = metrics.batch_size.labels(version)
        self.batcher = AdaptiveBatcher(
            self.predict_now,
            max_batch_size,
            max_wait_s,
            on_batch=lambda rows: histogram.observe(rows),
            name=f"v{version}",
        )
        self._latency = metrics.model_latency.labels(version)

    async def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Forecasts through the adaptive batcher (shape (rows, horizon))."""
        assert self.batcher is not None, "start_batching() first"
        started = time.perf_counter()
        result = await self.batcher.predict(matrix)
        self._latency.observe(time.perf_counter() - started)
        return result


def load(project: Project, version: int) -> ServedModel:
    """Load one registered version (pyfunc → forecaster) with its signature's columns."""
    torch.set_num_threads(TORCH_THREADS)
    pyfunc = registry.load(project, version=version)
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise ModelError("the model's signature does not name its input columns", str(version))
    forecaster = pyfunc.unwrap_python_model().forecaster
    forecaster.net.eval()
    served = ServedModel(
        name=project.settings.model.name,
        version=version,
        forecaster=forecaster,
        columns=list(schema.input_names()),
    )
    served.outputs = output_columns(served.horizon)
    served.predict_now(np.zeros((1, len(served.columns))))  # warm up: the first call is slow
    return served
