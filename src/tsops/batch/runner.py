"""`tsops batch`: source → model → target, chunk by chunk, all or nothing.

The local engine holds about two chunks in memory whatever the input size: the source
yields Arrow record batches, each is scored in one pyfunc call, its output written before
the next is read. Targets publish only at the end (rename, transaction commit); any error,
Ctrl-C or SIGTERM aborts them, so a failed run leaves the previous output as it was.
"""

from __future__ import annotations

import re
import threading
import uuid

from tsops.batch.config import Job
from tsops.batch.model import BatchModel
from tsops.batch.staging import Summary


def run(job: Job, *, show_progress: bool = True, stop: threading.Event | None = None) -> Summary:
    """Run a validated job with its engine; returns what was read, written and rejected.
    `stop` (set by a signal handler) ends the run at the next chunk boundary, aborting the
    target: a signal never lands in the middle of a library call."""
    job.context.run_id = uuid.uuid4().hex[:12]
    # plugins first: a missing file or an unreachable database is reported before the
    # (slower) model download
    source = job.source.build(job.context)
    target = job.target.build(job.context)
    tracking = job.config.model.tracking_uri
    if tracking is None and job.context.project_dir is not None:
        tracking = job.context.project.tracking_uri
    uri = job.config.model.uri
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):  # a path: relative to the job file
        uri = str(job.context.path(uri))
    model = BatchModel.load(uri, tracking)
    try:
        if job.config.engine == "spark":
            from tsops.spark_session import require_pyspark

            require_pyspark("engine")
            from tsops.batch.spark import run_spark

            return run_spark(job, model, source, target, stop=stop)
        from tsops.batch.local import run_local

        return run_local(job, model, source, target, show_progress=show_progress, stop=stop)
    finally:
        model.close()
