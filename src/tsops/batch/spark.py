"""`engine: spark`: the same job on Spark (local mode or a cluster).

source ─ Spark reads CSV/Parquet itself; other sources are staged to Parquet first
  → mapInArrow: each Python worker loads the model once and runs the local engine's
    ChunkProcessor on Spark's Arrow batches (chunk_rows rows each); rejected rows come
    out of the same pass with their reason and position (partition, chunk, row)
  → one staging folder of Parquet (a single pass over the model)
  → the target: file targets are written by Spark to a temporary folder renamed into
    place; other targets (SQL, Kafka, your own) read the staging folder through the
    local target, in one transaction as with the local engine
  → the rejects file (skip) or, with fail, an error naming the first rejected row.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from tsops.batch.chunks import CHUNK, REASON, ROW, ChunkProcessor, ChunkResult, kept_columns, rechunk
from tsops.batch.config import Job, SparkSpec
from tsops.batch.model import BatchModel
from tsops.batch.sources import REJECT_COLUMN
from tsops.batch.staging import Interrupted, RejectsFile, Summary, describe
from tsops.errors import DataError, ModelError

PARTITION = "partition"
SAMPLE_ROWS = 256  # scored on the driver to learn the prediction columns' types
_MODELS: dict[str, BatchModel] = {}  # per Python worker: loaded once, reused by every task


def session(spec: SparkSpec, chunk_rows: int) -> Any:
    """The SparkSession (an existing one is reused; runtime SQL settings are applied)."""
    from tsops.spark_session import get_session

    runtime = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.maxRecordsPerBatch": chunk_rows,
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    return get_session(spec.master, "tsops-batch", {**runtime, **spec.conf})


def _worker_model(path: str, uri: str) -> BatchModel:
    if path not in _MODELS:
        local = path
        if not os.path.isabs(path):  # shipped with addFile (cluster mode)
            from pyspark import SparkFiles

            local = SparkFiles.get(path)
        _MODELS[path] = BatchModel(Path(local), uri)
    return _MODELS[path]


def _combined(result: ChunkResult, schema: pa.Schema, partition: int, chunk: int) -> pa.RecordBatch:
    """Accepted rows (predictions, no reason) and rejected rows (reason, no predictions) of
    one chunk in the staging schema."""
    accepted = result.accepted_raw()
    n = accepted.num_rows
    parts = []
    if n:
        arrays = []
        for field in schema:
            if field.name in accepted.schema.names:
                arrays.append(accepted.column(field.name).cast(field.type))
            elif field.name in result.predictions:
                arrays.append(result.predictions[field.name].cast(field.type))
            else:
                arrays.append(pa.nulls(n, field.type))
        parts.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    if result.rejected is not None:
        rejected = result.rejected
        m = rejected.num_rows
        arrays = []
        for field in schema:
            if field.name == PARTITION:
                arrays.append(pa.array([partition] * m, pa.int64()))
            elif field.name in rejected.schema.names:
                arrays.append(rejected.column(field.name).cast(field.type))
            else:
                arrays.append(pa.nulls(m, field.type))
        parts.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    if not parts:
        return pa.RecordBatch.from_pylist([], schema=schema)
    return parts[0] if len(parts) == 1 else pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


def _scorer(model_path: str, uri: str, schema: pa.Schema) -> Any:
    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        partition = context.partitionId() if context else 0
        processor = ChunkProcessor(_worker_model(model_path, uri), first_only=False)
        offset = 0
        for chunk, batch in enumerate(batches):
            result = processor.process(batch, chunk, offset)
            offset += batch.num_rows
            yield _combined(result, schema, partition, chunk)

    return score


def _stage_source(source: Any, folder: Path, chunk_rows: int) -> Path:
    """A source Spark cannot read itself, written once to Parquet (bounded memory)."""
    import pyarrow.parquet as pq

    path = folder / "source.parquet"
    writer = None
    try:
        for batch in rechunk(source.batches(), chunk_rows):
            if writer is None:
                writer = pq.ParquetWriter(path, batch.schema)
            writer.write_batch(batch, row_group_size=chunk_rows)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise DataError("the source has no rows; nothing was written", "data.source")
    return path


def run_spark(
    job: Job, model: BatchModel, source: Any, target: Any, *, stop: threading.Event | None = None
) -> Summary:
    started = time.perf_counter()
    cfg = job.config
    spark = session(cfg.spark, cfg.chunk_rows)
    from pyspark.sql import functions as F

    work = Path(tempfile.mkdtemp(prefix="tsops-batch-spark-", dir=cfg.spark.staging_dir))
    watching = _cancel_jobs_on(stop, spark)
    try:
        stage, keep, predictions, input_names, partitions = _score(spark, job, model, source, work)
        _check(stop)
        staged = ds.dataset(stage, format="parquet")
        is_rejected = ds.field(REASON).is_valid()
        rows_read = staged.count_rows()
        rejected = staged.count_rows(filter=is_rejected)
        if rejected and cfg.rejects.policy == "fail":
            first = (
                spark.read.parquet(str(stage))
                .filter(F.col(REASON).isNotNull())
                .orderBy(PARTITION, CHUNK, ROW)
                .first()
            )
            raise DataError(
                f"row rejected ({first[REASON]}); nothing was written. Fix the row, or set "
                "rejects.policy: skip to write such rows to a rejects file",
                f"partition {first[PARTITION]}, chunk {first[CHUNK]}, row {first[ROW]}",
            )
        if rejected == rows_read:
            raise DataError(f"every row ({rows_read}) was rejected; nothing was written", "data.source")
        out_columns = [*keep, *predictions]
        if hasattr(target, "write_spark"):
            accepted = spark.read.parquet(str(stage)).filter(F.col(REASON).isNull()).select(*out_columns)
            target.write_spark(accepted)
        else:
            _write_local(target, staged, out_columns, ~is_rejected, cfg.chunk_rows)
        if cfg.rejects.policy == "skip":
            reject_columns = [*(n for n in input_names if n != REJECT_COLUMN), REASON, PARTITION, CHUNK, ROW]
            _write_rejects(job, staged, reject_columns, is_rejected)
    except Exception:
        if stop is not None and stop.is_set():
            raise Interrupted("stopped; nothing was written", "signal") from None
        raise
    finally:
        watching.set()
        shutil.rmtree(work, ignore_errors=True)
    return Summary(
        engine="spark",
        rows_read=rows_read,
        rows_written=rows_read - rejected,
        rejected=rejected,
        chunks=partitions,
        seconds=time.perf_counter() - started,
        target=describe(cfg.data.target),
        rejects=str(job.rejects_path) if cfg.rejects.policy == "skip" else None,
    )


def _score(
    spark: Any, job: Job, model: BatchModel, source: Any, work: Path
) -> tuple[Path, list[str], dict[str, pa.DataType], list[str], int]:
    """One pass of the model over the source into a staging folder (accepted and rejected
    rows together); returns it with the kept and prediction columns."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    cfg = job.config
    if hasattr(source, "spark_frame"):
        frame = source.spark_frame(spark)
    else:
        frame = spark.read.parquet(str(_stage_source(source, work, cfg.chunk_rows)))
    model.check_columns(frame.columns)
    in_schema = to_arrow_schema(frame.schema, timezone="UTC")
    predictions = _prediction_types(model, frame.limit(SAMPLE_ROWS).toArrow())
    input_names = [f.name for f in in_schema]
    keep = kept_columns(cfg.keep, [n for n in input_names if n != REJECT_COLUMN], list(predictions))
    fields = [*in_schema, *(pa.field(n, t) for n, t in predictions.items())]
    fields += [pa.field(REASON, pa.string()), pa.field(PARTITION, pa.int64())]
    fields += [pa.field(CHUNK, pa.int64()), pa.field(ROW, pa.int64())]
    staging_schema = pa.schema(fields)
    scorer = _scorer(_model_path(spark, model), model.uri, staging_schema)
    stage = work / "scored"
    frame.mapInArrow(scorer, from_arrow_schema(staging_schema)).write.parquet(str(stage))
    return stage, keep, predictions, input_names, frame.rdd.getNumPartitions()


def _write_rejects(job: Job, staged: ds.Dataset, columns: list[str], is_rejected: Any) -> None:
    rejects = RejectsFile(job)
    try:
        for batch in staged.to_batches(columns=columns, filter=is_rejected):
            rejects.write(batch)
        rejects.commit(pa.schema([staged.schema.field(c) for c in columns]))
    except BaseException:
        rejects.abort()
        raise


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted("stopped; nothing was written", "signal")


def _cancel_jobs_on(stop: threading.Event | None, spark: Any) -> threading.Event:
    """A signal cancels the running Spark jobs (the run then aborts); set the returned event
    when the run is over."""
    done = threading.Event()
    if stop is None:
        return done

    def watch() -> None:
        while not done.is_set():
            if stop.wait(0.5):
                spark.sparkContext.cancelAllJobs()
                return

    threading.Thread(target=watch, name="tsops-batch-cancel", daemon=True).start()
    return done


def _prediction_types(model: BatchModel, sample: pa.Table) -> dict[str, pa.DataType]:
    """The prediction columns and their types, from scoring a sample on the driver."""
    processor = ChunkProcessor(model, first_only=False)
    for batch in sample.to_batches():
        result = processor.process(batch, 0, 0)
        if result.predictions:
            return {name: values.type for name, values in result.predictions.items()}
    raise ModelError(
        f"the model accepted none of the first {sample.num_rows} rows, so the output columns are unknown",
        model.uri,
    )


def _model_path(spark: Any, model: BatchModel) -> str:
    """Where executors find the model: the same folder in local mode, else shipped with
    SparkContext.addFile."""
    if spark.sparkContext.master.startswith("local"):
        return str(model.path)
    spark.sparkContext.addFile(str(model.path), recursive=True)
    return model.path.name  # resolved with SparkFiles.get on the worker


def _write_local(target: Any, staged: ds.Dataset, columns: list[str], keep: Any, chunk_rows: int) -> None:
    """Targets Spark has no writer for (SQL, Kafka, yours): all or nothing, as locally."""
    opened = False
    try:
        for batch in staged.to_batches(columns=columns, filter=keep, batch_size=chunk_rows):
            if not opened:
                target.open(batch.schema)
                opened = True
            target.write(batch)
        target.commit()
    except BaseException:
        target.abort()
        raise
