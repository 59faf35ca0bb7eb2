"""The SparkSession both Spark engines (`tsops batch`, `tsops stream`) run on."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def require_pyspark(where: str) -> None:
    """Refuse a Spark engine in one message when pyspark (the `spark` extra) is not installed."""
    from tsops.errors import ConfigError

    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the Spark engine needs pyspark, which tsops installs only with the spark extra: "
            "pip install 'tsops[spark]' (make setup does); or use the default engine",
            where,
        ) from None


def get_session(master: str, app: str, conf: Mapping[str, Any]) -> Any:
    """A SparkSession with the UI off and `conf` applied. An existing session is reused and
    gets `conf`'s runtime settings; its static ones stay as they were started."""
    # Spark's Python workers run this interpreter (the one with tsops and the model's packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    require_pyspark("spark")
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in conf.items():
        builder = builder.config(key, _text(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    for key, value in conf.items():
        try:
            spark.conf.set(key, _text(value))
        except Exception:  # a static setting of a session that was already running
            pass
    return spark
