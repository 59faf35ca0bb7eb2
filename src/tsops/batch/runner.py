"""`tsops batch`: source → model → target, chunk by chunk, all or nothing.

The local engine holds about two chunks in memory whatever the input size: the source
yields Arrow record batches, each is scored in one pyfunc call, its output written before
the next is read. Targets publish only at the end (rename, transaction commit); any error,
Ctrl-C or SIGTERM aborts them, so a failed run leaves the previous output as it was.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
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

from tsops.batch.chunks import ChunkResult
from tsops.batch.config import Job
from tsops.batch.model import BatchModel
from tsops.batch.plugins import BatchContext
from tsops.batch.targets import FileParams, ParquetTarget
from tsops.errors import DataError, ModelError, TsopsError


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


class Interrupted(TsopsError):
    """SIGTERM or Ctrl-C: the run stopped between chunks and published nothing."""

    kind = "interrupted"
    exit_code = 130


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


def result_schema(in_schema: pa.Schema) -> pa.Schema:
    from tsops.batch.sources import REJECT_COLUMN

    if REJECT_COLUMN in in_schema.names:
        return in_schema.remove(in_schema.get_field_index(REJECT_COLUMN))
    return in_schema


def cast_output(batch: pa.RecordBatch, schema: pa.Schema, index: int) -> pa.RecordBatch:
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        message = f"the model's output types changed from the first chunk: {e}"
        raise ModelError(message, f"chunk {index}") from None
