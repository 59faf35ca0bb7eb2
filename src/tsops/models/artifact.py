"""The registered model as an MLflow artefact: the pyfunc ("models from code"), the forecaster's
weights, its own code (so it stands alone where tsops is not installed) and exact requirements.
`registry.py` stores, aliases and loads models; this module is what gets logged."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from tsops.settings import Project


def log_model(
    project: Project,
    forecaster_dir: Path,
    input_example: pd.DataFrame,
    output_example: pd.DataFrame,
) -> Any:
    """Log the pyfunc (weights as artefacts, signature, input example) into the active run."""
    from mlflow.models import infer_signature

    from tsops.console import third_party_output
    from tsops.models import pyfunc_code

    # third_party_output: MLflow's "Successfully registered model …"; tsops says it itself
    with tempfile.TemporaryDirectory(prefix="tsops-code-") as tmp, third_party_output():
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_code.__file__,
            artifacts={"forecaster": str(forecaster_dir)},
            code_paths=[str(forecaster_code(Path(tmp)))],
            signature=infer_signature(input_example, output_example),
            input_example=input_example,
            registered_model_name=project.settings.model.name,
            pip_requirements=model_requirements(),
        )


CODE_PACKAGE = "tsops_forecaster"


def forecaster_code(into: Path) -> Path:
    """The forecaster's own code as a package of its own (`tsops_forecaster`: the network, its
    preprocessing and the pyfunc wrapper), logged with each model so that it loads and predicts
    where tsops is not installed. Never `tsops` itself: that name on PyPI is another project."""
    from tsops.models import lstm, pyfunc

    package = into / CODE_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""The tsops forecaster, as logged with an MLflow model."""\n')
    for module in (lstm, pyfunc):
        shutil.copyfile(str(module.__file__), package / Path(str(module.__file__)).name)
    return package


def model_requirements() -> list[str]:
    """What the logged model needs, at the versions it was trained with."""
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]
