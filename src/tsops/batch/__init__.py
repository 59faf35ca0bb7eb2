"""Batch prediction: source → any MLflow pyfunc model → target, from a job file.

Each plugin family is one small interface with a registry by name (`sources.SOURCES`,
`targets.TARGETS`); a user's own class is named by import path (`pkg.module:Class`).
"""

from tsops.batch.config import Job, load
from tsops.batch.runner import run
from tsops.batch.staging import Summary

__all__ = ["Job", "Summary", "load", "run"]
