"""The MLflow pyfunc wrapper: what `mlflow models serve`, KServe and MLServer load.

Input: a DataFrame with the feature columns (the model's signature names them).
Output: a DataFrame with one column per horizon step, `yhat_1` .. `yhat_H`.

Logged with each model as its own package (`tsops_forecaster`, with `lstm.py`) so the model
loads where tsops is not installed: `mlflow models serve`, MLServer, KServe.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.pyfunc import PythonModel

from .lstm import Forecaster  # relative: this module also runs as the copy carried with a model


def output_columns(horizon: int) -> list[str]:
    return [f"yhat_{h}" for h in range(1, horizon + 1)]


class ForecasterModel(PythonModel):
    def load_context(self, context):  # type: ignore[no-untyped-def]
        import torch

        torch.set_num_threads(1)
        self.forecaster = Forecaster.load(Path(context.artifacts["forecaster"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        yhat = self.forecaster.predict(frame)
        return pd.DataFrame(yhat, columns=output_columns(self.forecaster.cfg.horizon))
