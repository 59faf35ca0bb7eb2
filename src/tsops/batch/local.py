"""`engine: local`: one process, chunk by chunk, reading one chunk ahead and writing one
behind (`pipeline.py`), so memory is a few chunks plus the model whatever the input size.
With `threads: N`, N chunks are scored at once (for models that compute without the GIL,
e.g. PyTorch); results are still handled in chunk order."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from tsops.batch.chunks import ChunkProcessor, ChunkResult, kept_columns, output_batch, rechunk
from tsops.batch.config import Job
from tsops.batch.model import BatchModel
from tsops.batch.pipeline import BackgroundWriter, Prefetch
from tsops.batch.sources import Source
from tsops.batch.staging import (
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
from tsops.batch.targets import Target
from tsops.errors import DataError, TsopsError


class LocalRun:
    """The state of one run: where outputs and rejects go, and what was counted."""

    def __init__(self, job: Job, target: Target):
        self.job = job
        cfg = job.config
        self.sink: Any = StagedTarget(target, cfg.chunk_rows) if getattr(target, "staged", False) else target
        self.skip = cfg.rejects.policy == "skip"
        self.rejects = RejectsFile(job) if self.skip else None
        self.writer: BackgroundWriter | None = None
        self.out_schema: pa.Schema | None = None
        self.keep: list[str] = []
        self.rows_written = 0

    def handle(self, index: int, result: ChunkResult) -> None:
        """Rejects of one chunk to the rejects file (or the error), its output to the target."""
        if result.rejected is not None:
            if not self.skip:
                fail_on_reject(result, index)
            assert self.rejects is not None
            self.rejects.write(result.rejected)
        if not result.accepted.num_rows:
            return
        if self.out_schema is None:
            predictions = list(result.predictions)
            self.keep = kept_columns(self.job.config.keep, result.accepted.schema.names, predictions)
        output = output_batch(result, self.keep)
        if self.out_schema is None:
            self.out_schema = output.schema
            self.sink.open(self.out_schema)
            self.writer = BackgroundWriter(self.sink)
        elif not output.schema.equals(self.out_schema):
            output = cast_output(output, self.out_schema, index)
        assert self.writer is not None
        self.writer.write(output)
        self.rows_written += output.num_rows

    def commit(self, in_schema: pa.Schema, rows_read: int) -> None:
        if self.writer is None:
            if self.rejects is not None:
                self.rejects.commit(result_schema(in_schema))
            raise DataError(
                f"every row ({rows_read}) was rejected; the target was left as it was",
                str(self.job.rejects_path),
            )
        self.writer.finish()
        self.sink.commit()
        if self.rejects is not None:
            self.rejects.commit(result_schema(in_schema))

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        self.sink.abort()
        if self.rejects is not None:
            self.rejects.abort()


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
    state = LocalRun(job, target)
    processor = ChunkProcessor(model, first_only=not state.skip)
    total = getattr(source, "total_rows", lambda: None)()
    rows_read = chunks = 0
    in_schema: pa.Schema | None = None
    chunks_in = Prefetch(rechunk(source.batches(), cfg.chunk_rows), stop=stop)
    pool = (
        ThreadPoolExecutor(cfg.threads, thread_name_prefix="tsops-batch-score") if cfg.threads > 1 else None
    )
    scoring: deque[tuple[int, int, Future[ChunkResult]]] = deque()
    scored_all = False
    try:
        with progress_bar(total, show_progress) as (bar, task):

            def settle(keep_in_flight: int) -> None:
                while len(scoring) > keep_in_flight:
                    index, rows, future = scoring.popleft()
                    state.handle(index, future.result())
                    bar.update(task, advance=rows)

            for index, batch in enumerate(chunks_in):
                if stop is not None and stop.is_set():
                    break
                if in_schema is None:
                    in_schema = batch.schema
                    model.check_columns(in_schema.names)
                if pool is not None:
                    future = pool.submit(processor.process, batch, index, rows_read)
                else:
                    future = Future()
                    future.set_result(processor.process(batch, index, rows_read))
                scoring.append((index, batch.num_rows, future))
                rows_read += batch.num_rows
                chunks += 1
                settle(cfg.threads - 1)
            if not (stop is not None and stop.is_set()):
                settle(0)
                scored_all = True
        if stop is not None and stop.is_set():
            raise Interrupted(f"stopped after {chunks} chunk(s); nothing was written", "signal")
        if in_schema is None:
            raise DataError("the source has no rows; nothing was written", describe(cfg.data.source))
        state.commit(in_schema, rows_read)
    except BaseException as e:  # a failed chunk names itself; other errors get the position
        if isinstance(e, TsopsError) and not isinstance(e, Interrupted) and not scored_all:
            if "chunk" not in (e.where or ""):
                e.details.append(
                    f"stopped after {chunks} chunk(s) ({rows_read} source rows); nothing written"
                )
        chunks_in.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        state.abort()
        raise
    chunks_in.close()
    if pool is not None:
        pool.shutdown()
    return Summary(
        engine="local",
        rows_read=rows_read,
        rows_written=state.rows_written,
        rejected=state.rejects.rows if state.rejects else 0,
        chunks=chunks,
        seconds=time.perf_counter() - started,
        target=describe(cfg.data.target),
        rejects=str(job.rejects_path) if state.rejects else None,
    )
