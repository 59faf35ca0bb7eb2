"""`engine: local`: one process, chunk by chunk, reading one chunk ahead and writing one
behind (`pipeline.py`), so memory is a few chunks plus the model whatever the input size."""

from __future__ import annotations

import threading
import time
from typing import Any

import pyarrow as pa

from tsops.batch.chunks import ChunkProcessor, kept_columns, output_batch, rechunk
from tsops.batch.config import Job
from tsops.batch.model import BatchModel
from tsops.batch.pipeline import BackgroundWriter, Prefetch
from tsops.batch.runner import (
    Interrupted,
    RejectsFile,
    StagedTarget,
    Summary,
    cast_output,
    describe,
    fail_on_reject,
    progress_bar,
    result_schema,
)
from tsops.batch.sources import Source
from tsops.batch.targets import Target
from tsops.errors import DataError


def run_local(
    job: Job,
    model: BatchModel,
    source: Source,
    target: Target,
    *,
    show_progress: bool = True,
    stop: threading.Event | None = None,
) -> Summary:
    started = time.perf_counter()
    cfg = job.config
    sink: Any = StagedTarget(target, cfg.chunk_rows) if getattr(target, "staged", False) else target
    skip = cfg.rejects.policy == "skip"
    rejects = RejectsFile(job) if skip else None
    processor = ChunkProcessor(model, first_only=not skip)
    total = getattr(source, "total_rows", lambda: None)()
    rows_read = rows_written = chunks = 0
    out_schema: pa.Schema | None = None
    in_schema: pa.Schema | None = None
    keep: list[str] = []
    chunks_in = Prefetch(rechunk(source.batches(), cfg.chunk_rows), stop=stop)
    writer: BackgroundWriter | None = None
    try:
        with progress_bar(total, show_progress) as (bar, task):
            for index, batch in enumerate(chunks_in):
                if stop is not None and stop.is_set():
                    break
                if in_schema is None:
                    in_schema = batch.schema
                    model.check_columns(in_schema.names)
                result = processor.process(batch, index, rows_read)
                rows_read += batch.num_rows
                chunks += 1
                if result.rejected is not None:
                    if not skip:
                        fail_on_reject(result, index)
                    assert rejects is not None
                    rejects.write(result.rejected)
                if result.accepted.num_rows:
                    if out_schema is None:
                        keep = kept_columns(cfg.keep, result.accepted.schema.names, list(result.predictions))
                    output = output_batch(result, keep)
                    if out_schema is None:
                        out_schema = output.schema
                        sink.open(out_schema)
                        writer = BackgroundWriter(sink)
                    elif not output.schema.equals(out_schema):
                        output = cast_output(output, out_schema, index)
                    assert writer is not None
                    writer.write(output)
                    rows_written += output.num_rows
                bar.update(task, advance=batch.num_rows)
        if stop is not None and stop.is_set():
            raise Interrupted(f"stopped after {chunks} chunk(s); nothing was written", "signal")
        if in_schema is None:
            raise DataError("the source has no rows; nothing was written", describe(cfg.data.source))
        if writer is None:
            if rejects is not None:
                rejects.commit(result_schema(in_schema))
            raise DataError(
                f"every row ({rows_read}) was rejected; the target was left as it was",
                str(job.rejects_path),
            )
        writer.finish()
        sink.commit()
        if rejects is not None:
            rejects.commit(result_schema(in_schema))
    except BaseException:
        chunks_in.close()
        if writer is not None:
            writer.stop()
        sink.abort()
        if rejects is not None:
            rejects.abort()
        raise
    chunks_in.close()
    return Summary(
        engine="local",
        rows_read=rows_read,
        rows_written=rows_written,
        rejected=rejects.rows if rejects else 0,
        chunks=chunks,
        seconds=time.perf_counter() - started,
        target=describe(cfg.data.target),
        rejects=str(job.rejects_path) if rejects else None,
    )
