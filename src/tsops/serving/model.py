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
from tsops.models.lstm import Forecaster, _context_kind
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
        cfg = self.forecaster.cfg
        at = {c: i for i, c in enumerate(self.columns)}
        missing = [c for c in cfg.input_names if c not in at]
        if missing:
            raise ModelError(f"the signature lacks the forecaster's input(s) {missing[:5]}", "")
        kinds = [_context_kind(n) for n in cfg.context_names]
        self._window = np.array([at[c] for c in cfg.window_names])
        self._context = np.array([at[c] for c in cfg.context_names], dtype=np.intp)
        self._level = np.array([k == "level" for k in kinds], dtype=bool)
        self._spread = np.array([k == "spread" for k in kinds], dtype=bool)
        season = cfg.season
        backs = [season * -(-h // season) - h for h in range(1, cfg.horizon + 1)]
        self._base = np.array([at[f"lag_{b}"] for b in backs])  # seasonal-naive columns

    def predict_now(self, matrix: np.ndarray) -> np.ndarray:
        """Unbatched forecasts for a finite (rows, columns) float64 matrix.

        The same arithmetic as `Forecaster.predict` (which `mlflow models serve` runs through
        the pyfunc) on array slices instead of DataFrame columns: a 1-row call spends its time
        in the network, not in pandas. The equality test against `mlflow models serve` guards
        that both stay the same."""
        fix_torch_threads()
        cfg = self.forecaster.cfg
        window = matrix[:, self._window]
        context = matrix[:, self._context]
        anchor = window[:, 0].copy()
        seq = (window[:, ::-1] - anchor[:, None]) / cfg.scale
        context[:, self._level] = (context[:, self._level] - anchor[:, None]) / cfg.scale
        context[:, self._spread] = context[:, self._spread] / cfg.scale
        base = matrix[:, self._base]
        with torch.inference_mode():
            delta = self.forecaster.net(
                torch.from_numpy(np.ascontiguousarray(seq, dtype=np.float32)).unsqueeze(-1),
                torch.from_numpy(context.astype(np.float32)),
            ).numpy()
        return base + delta.astype(np.float64) * cfg.residual_scale

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
    forecaster = pyfunc.unwrap_python_model().forecaster
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
