"""A registered model version loaded for serving: the forecaster, its signature's columns and
its own adaptive batcher. Loaded once (the registry is not touched on the request path)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from tsops import registry
from tsops.errors import ModelError
from tsops.models.lstm import Forecaster
from tsops.models.pyfunc import output_columns
from tsops.serving.batching import AdaptiveBatcher
from tsops.serving.metrics import ServingMetrics
from tsops.settings import Project

TORCH_THREADS = 1  # as the pyfunc (`mlflow models serve`): same kernels, same numbers
_thread_state = threading.local()


def fix_torch_threads() -> None:
    """Pin torch's intra-op threads in the calling thread. OpenMP keeps the setting per
    thread, so a predict thread left at the default spins one thread per core and starves the
    event loop under load."""
    if not getattr(_thread_state, "pinned", False):
        torch.set_num_threads(TORCH_THREADS)
        _thread_state.pinned = True


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

    def __post_init__(self) -> None:
        """Index the signature's columns once, so predicting is array slicing only."""
        self._columns = tuple(self.columns)
        try:
            self.forecaster.plan(self._columns)
        except ModelError as e:
            raise ModelError(f"the signature does not fit the forecaster: {e.message}", "") from None

    def predict_now(self, matrix: np.ndarray) -> np.ndarray:
        """Unbatched forecasts for a finite (rows, columns) float64 matrix: the forecaster's own
        arithmetic on array slices (`Forecaster.predict_matrix`), so a 1-row call spends its time
        in the network, not in pandas."""
        fix_torch_threads()
        return self.forecaster.predict_matrix(matrix, self._columns)

    def intervals(self, matrix: np.ndarray, yhat: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The conformal interval bounds per level around `yhat` (empty for a model without)."""
        return self.forecaster.interval_bounds(matrix, self._columns, yhat)

    def start_batching(self, max_batch_size: int, max_wait_s: float, metrics: ServingMetrics) -> None:
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
    fix_torch_threads()
    pyfunc = registry.load(project, version=version)
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise ModelError("the model's signature does not name its input columns", str(version))
    forecaster = registry.forecaster_of(pyfunc)
    forecaster.net.eval()
    served = ServedModel(
        name=project.settings.model.name,
        version=version,
        forecaster=forecaster,
        columns=list(schema.input_names()),
        outputs=output_columns(forecaster.cfg.horizon),
    )
    served.predict_now(np.zeros((1, len(served.columns))))  # warm up: the first call is slow
    return served
