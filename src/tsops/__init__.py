"""tsops: a time-series forecasting model from history to real-time predictions on a live stream."""

import os as _os

__version__ = "0.1.0"


def _in_process_metrics() -> None:
    """Importing `feast.metrics` (Feast's store imports it) sets PROMETHEUS_MULTIPROC_DIR for the
    process and its children, which switches every prometheus_client metric created afterwards
    to file-backed values: a pid check, a lock and an mmap write per update, ~4% of a serving
    request and ~10 µs per event in a stream worker. tsops' metrics belong to their process, so
    unless the user pointed the variable at a directory of their own, values stay in memory."""
    directory = _os.environ.get("PROMETHEUS_MULTIPROC_DIR") or _os.environ.get("prometheus_multiproc_dir")
    if directory and not _os.path.basename(directory.rstrip("/")).startswith("feast_metrics_"):
        return
    from prometheus_client import values

    values.ValueClass = values.MutexValue


_in_process_metrics()
