"""MLflow "models from code" entry: logged with each model, executed when it loads."""

from mlflow.models import set_model

from tsops.models.pyfunc import ForecasterModel

set_model(ForecasterModel())
