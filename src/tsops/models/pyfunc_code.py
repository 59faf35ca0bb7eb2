"""MLflow "models from code" entry: logged with each model, executed when it loads.

In a process that has tsops, its installed forecaster code is used; anywhere else (MLServer,
KServe, `mlflow models serve` in a bare environment) the copy logged with the model is.
"""

from mlflow.models import set_model

try:
    from tsops.models.pyfunc import ForecasterModel
except ModuleNotFoundError:
    from tsops_forecaster.pyfunc import ForecasterModel  # type: ignore[no-redef]

set_model(ForecasterModel())
