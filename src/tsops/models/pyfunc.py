"""The MLflow pyfunc wrapper: what `mlflow models serve`, KServe and MLServer load.

Input: a DataFrame with the feature columns (the model's signature names them).
Output: a DataFrame with one column per horizon step, `yhat_1` .. `yhat_H`. `with_intervals`
adds the conformal bounds as columns (what `tsops batch` writes); `predict` keeps to the
signature's outputs.

Logged with each model as its own package (`tsops_forecaster`, with `lstm.py`) so the model
loads where tsops is not installed: `mlflow models serve`, MLServer, KServe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from .lstm import Forecaster  # relative: this module also runs as the copy carried with a model


def output_columns(horizon: int) -> list[str]:
    return [f"yhat_{h}" for h in range(1, horizon + 1)]


def interval_columns(level: str, horizon: int) -> tuple[list[str], list[str]]:
    """The lower and upper bound columns of one level ("80"): `yhat_lower_80_1` ...,
    `yhat_upper_80_1` ... (OIP's `yhat_lower_80` output, one column per step)."""
    steps = range(1, horizon + 1)
    return [f"yhat_lower_{level}_{h}" for h in steps], [f"yhat_upper_{level}_{h}" for h in steps]


class ForecasterModel(PythonModel):
    def load_context(self, context):  # type: ignore[no-untyped-def]
        import torch

        torch.set_num_threads(1)
        self.forecaster = Forecaster.load(Path(context.artifacts["forecaster"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        yhat = self.forecaster.predict(frame)
        return pd.DataFrame(yhat, columns=output_columns(self.forecaster.cfg.horizon))

    def with_intervals(self, model_input: pd.DataFrame, forecast: pd.DataFrame) -> pd.DataFrame:
        """`forecast` (this model's `predict` of `model_input`) followed by the lower and upper
        bounds of every level the model was calibrated at (`model.interval_levels` at
        training), level by level; unchanged for a model without intervals."""
        bounds = self.forecaster.interval_bounds_frame(model_input, forecast.to_numpy(np.float64))
        if not bounds:
            return forecast
        horizon = self.forecaster.cfg.horizon
        parts = [forecast.reset_index(drop=True)]
        for level, (lower, upper) in bounds.items():
            low_names, up_names = interval_columns(level, horizon)
            parts.append(pd.DataFrame(lower, columns=low_names))
            parts.append(pd.DataFrame(upper, columns=up_names))
        return pd.concat(parts, axis=1)
