"""`tsops batch`: source → model → target, chunk by chunk, all or nothing.

The local engine holds about two chunks in memory whatever the input size: the source
yields Arrow record batches, each is scored in one pyfunc call, its output written before
the next is read. Targets publish only at the end (rename, transaction commit); any error,
Ctrl-C or SIGTERM aborts them, so a failed run leaves the previous output as it was.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from tsops.batch.chunks import ChunkProcessor, ChunkResult, kept_columns, output_batch, rechunk
from tsops.batch.config import Job
from tsops.batch.model import BatchModel
from tsops.batch.plugins import BatchContext
from tsops.batch.targets import FileParams, ParquetTarget, Target
from tsops.errors import DataError, ModelError


@dataclass
class Summary:
    engine: str
    rows_read: int
    rows_written: int
    rejected: int
    chunks: int
    seconds: float
    target: str
    rejects: str | None

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}


def describe(spec: Any) -> str:
    params = spec.params
    where = next((str(params[k]) for k in ("path", "table", "topic", "query") if k in params), "")
    return f"{spec.type} {where}".strip()


class RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "… rows/s", style="cyan")


@contextmanager
def progress_bar(total: int | None, show: bool) -> Iterator[tuple[Progress, Any]]:
    console = Console(stderr=True)
    columns: list[Any] = [TextColumn("[bold]scoring")]
    if total:
        columns.append(BarColumn())
    columns += [TextColumn("{task.completed:,.0f} rows"), RowsPerSecond(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not (show and console.is_terminal)) as bar:
        yield bar, bar.add_task("scoring", total=total)


def run(job: Job, *, show_progress: bool = True) -> Summary:
    """Run a validated job with its engine; returns what was read, written and rejected."""
    job.context.run_id = uuid.uuid4().hex[:12]
    tracking = job.config.model.tracking_uri
    if tracking is None and job.context.project_dir is not None:
        tracking = job.context.project.tracking_uri
    model = BatchModel.load(job.config.model.uri, tracking)
    try:
        if job.config.engine == "spark":
            from tsops.batch.spark import run_spark

            return run_spark(job, model)
        return run_local(job, model, show_progress=show_progress)
    finally:
        model.close()


class RejectsFile:
    """The rejects file of a `skip` run: written like any file target, all or nothing. A run
    without rejects still replaces the previous run's file (with an empty one)."""

    def __init__(self, job: Job):
        path = job.rejects_path
        assert path is not None
        cls: Any = ParquetTarget if path.suffix.lower() == ".parquet" else _csv_target()
        self.target = cls(cls.Params(path=str(path)), job.context)
        self.path = path
        self.rows = 0
        self.opened = False

    def write(self, batch: pa.RecordBatch) -> None:
        if not self.opened:
            self.target.open(batch.schema)
            self.opened = True
        self.target.write(batch)
        self.rows += batch.num_rows

    def commit(self, empty_schema: pa.Schema | None) -> None:
        if not self.opened and empty_schema is not None:
            from tsops.batch.chunks import CHUNK, REASON, ROW

            schema = empty_schema.append(pa.field(REASON, pa.string()))
            schema = schema.append(pa.field(CHUNK, pa.int64())).append(pa.field(ROW, pa.int64()))
            self.target.open(schema)
            self.opened = True
        if self.opened:
            self.target.commit()

    def abort(self) -> None:
        self.target.abort()


def _csv_target() -> type:
    from tsops.batch.targets import CsvTarget

    return CsvTarget


def fail_on_reject(result: ChunkResult, index: int) -> None:
    assert result.first_reject is not None
    in_chunk, source_row, reason = result.first_reject
    raise DataError(
        f"row rejected ({reason}); nothing was written. Fix the row, or set rejects.policy: skip "
        "to write such rows to a rejects file",
        f"chunk {index}, row {in_chunk} (source row {source_row})",
    )


class StagedTarget:
    """For targets that cannot take a run back (Kafka): the output goes to a local Parquet
    file first and is handed to the target only after every chunk succeeded."""

    def __init__(self, target: Any, chunk_rows: int):
        self.target = target
        self.chunk_rows = chunk_rows
        self.folder = Path(tempfile.mkdtemp(prefix="tsops-batch-stage-"))
        context = BatchContext(self.folder, run_id="stage")
        self.stage = ParquetTarget(FileParams(path="stage.parquet"), context)

    def open(self, schema: pa.Schema) -> None:
        self.stage.open(schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self.stage.write(batch)

    def commit(self) -> None:
        import pyarrow.parquet as pq

        try:
            self.stage.commit()
            staged = pq.ParquetFile(self.stage.path)
            self.target.open(staged.schema_arrow)
            for batch in staged.iter_batches(batch_size=self.chunk_rows):
                self.target.write(batch)
            self.target.commit()
        except BaseException:
            self.target.abort()
            raise
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def abort(self) -> None:
        self.stage.abort()
        shutil.rmtree(self.folder, ignore_errors=True)


def run_local(job: Job, model: BatchModel, *, show_progress: bool = True) -> Summary:
    started = time.perf_counter()
    cfg = job.config
    source = job.source.build(job.context)
    target: Target = job.target.build(job.context)
    sink: Any = StagedTarget(target, cfg.chunk_rows) if getattr(target, "staged", False) else target
    skip = cfg.rejects.policy == "skip"
    rejects = RejectsFile(job) if skip else None
    processor = ChunkProcessor(model, first_only=not skip)
    total = getattr(source, "total_rows", lambda: None)()
    rows_read = rows_written = chunks = 0
    out_schema: pa.Schema | None = None
    in_schema: pa.Schema | None = None
    keep: list[str] = []
    opened = False
    try:
        with progress_bar(total, show_progress) as (bar, task):
            for index, batch in enumerate(rechunk(source.batches(), cfg.chunk_rows)):
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
                        opened = True
                    elif not output.schema.equals(out_schema):
                        output = _cast(output, out_schema, index)
                    sink.write(output)
                    rows_written += output.num_rows
                bar.update(task, advance=batch.num_rows)
        if in_schema is None:
            raise DataError("the source has no rows; nothing was written", describe(cfg.data.source))
        if not opened:
            if rejects is not None:
                rejects.commit(result_schema(in_schema))
            raise DataError(
                f"every row ({rows_read}) was rejected; the target was left as it was",
                str(job.rejects_path),
            )
        sink.commit()
        if rejects is not None:
            rejects.commit(result_schema(in_schema))
    except BaseException:
        sink.abort()
        if rejects is not None:
            rejects.abort()
        raise
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


def result_schema(in_schema: pa.Schema) -> pa.Schema:
    from tsops.batch.sources import REJECT_COLUMN

    if REJECT_COLUMN in in_schema.names:
        return in_schema.remove(in_schema.get_field_index(REJECT_COLUMN))
    return in_schema


def _cast(batch: pa.RecordBatch, schema: pa.Schema, index: int) -> pa.RecordBatch:
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        message = f"the model's output types changed from the first chunk: {e}"
        raise ModelError(message, f"chunk {index}") from None
