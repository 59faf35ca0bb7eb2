"""Batch sources: one small interface, a registry by name.

| name | reads |
|---|---|
| `parquet`, `csv` | one file, a folder (hive partitions become columns) or a glob, via pyarrow.dataset |
| `sql` | a SQLAlchemy query, streamed from a server-side cursor |
| `feast` | point-in-time features from the project's offline store for (entity, time) rows |
| `entities` | the current online features of entity ids: forecasts from the feature store |

A source may flag rows it already knows are unusable by filling the string column
`REJECT_COLUMN`; the runner sends those to the rejects file instead of the model.
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from pydantic import Field, model_validator

from tsops.batch.plugins import BatchContext
from tsops.errors import DataError, StoreError
from tsops.secrets import resolve_url
from tsops.settings import Strict

REJECT_COLUMN = "_tsops_reject"
CSV_BLOCK_BYTES = 2 << 20  # pyarrow's 1 MiB default cuts 10-column CSVs into ~6k-row batches


class Source(Protocol):
    """Yields the input as Arrow record batches (of any size: the runner re-chunks them)."""

    def batches(self) -> Iterator[pa.RecordBatch]: ...


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


class FileParams(Strict):
    path: str = Field(min_length=1, description="a file, a folder (partitioned or not) or a glob")
    columns: list[str] | None = Field(None, description="read only these columns")


class CsvParams(FileParams):
    delimiter: str = Field(",", min_length=1, max_length=1)
    column_types: dict[str, str] = Field(
        default_factory=dict, description="Arrow type names by column, e.g. {x3: string}"
    )


class FileSource:
    """Parquet or CSV: pyarrow.dataset finds the files, partitions and the common schema;
    each file is then streamed, so memory stays bounded whatever the input size."""

    format: Literal["parquet", "csv"]
    Params: type[FileParams] = FileParams

    def __init__(self, params: FileParams, context: BatchContext):
        self.params = params
        self.context = context
        raw = params.path
        self.location = str(context.path(raw))
        if _has_glob(raw):
            self.paths = sorted(globlib.glob(self.location, recursive=True))
            if not self.paths:
                raise DataError("no file matches this pattern", self.location)
        elif not Path(self.location).exists():
            raise DataError("no such file or folder", self.location)
        else:
            self.paths = [self.location]
        try:
            self.dataset = ds.dataset(
                self.paths if len(self.paths) > 1 or _has_glob(raw) else self.location,
                format=self._format(),
                partitioning="hive",
            )
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read as {self.format}: {e}", self.location) from None
        if params.columns:
            missing = [c for c in params.columns if c not in self.dataset.schema.names]
            if missing:
                raise DataError(f"the source has no column(s) {missing}", "data.source.params.columns")

    def _format(self) -> ds.FileFormat:
        return ds.ParquetFileFormat()

    @property
    def schema(self) -> pa.Schema:
        schema = self.dataset.schema
        return pa.schema([schema.field(c) for c in self.params.columns]) if self.params.columns else schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        """File by file, each through its format's streaming reader: the dataset scanner reads
        ahead without bound when the consumer is slower (1 GB and more on a 10M-row file).
        Partition values (`key=value` folders) become columns; types follow the dataset's."""
        schema = self.schema
        for fragment in self.dataset.get_fragments():
            keys = ds.get_partition_keys(fragment.partition_expression) or {}
            in_file = [f for f in schema if f.name in fragment.physical_schema.names]
            try:
                for batch in self._read_file(fragment.path, in_file):
                    n = batch.num_rows
                    arrays = [
                        pa.array([keys[f.name]] * n, f.type)
                        if f.name in keys
                        else batch.column(f.name).cast(f.type)
                        if f.name in batch.schema.names
                        else pa.nulls(n, f.type)  # a column this file lacks
                        for f in schema
                    ]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise DataError(f"cannot read: {e}", fragment.path) from None

    def _read_file(self, path: str, fields: list[pa.Field]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        # pre_buffer would read every column chunk of the file ahead
        reader = pq.ParquetFile(path, pre_buffer=False)
        yield from reader.iter_batches(batch_size=self.context.chunk_rows, columns=[f.name for f in fields])

    def total_rows(self) -> int | None:
        return self.dataset.count_rows()

    def spark_frame(self, spark: Any) -> Any:
        """The same rows as a Spark DataFrame (Spark reads the files itself)."""
        reader = spark.read
        paths = [self.location] if _has_glob(self.params.path) or len(self.paths) == 1 else self.paths
        frame = reader.parquet(*paths)
        return frame.select(*self.params.columns) if self.params.columns else frame


class ParquetSource(FileSource):
    format = "parquet"


class CsvSource(FileSource):
    format = "csv"
    Params = CsvParams
    params: CsvParams

    def _format(self) -> ds.FileFormat:
        import pyarrow.csv as pacsv

        types = {name: pa.type_for_alias(t) for name, t in self.params.column_types.items()}
        return ds.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter=self.params.delimiter),
            convert_options=pacsv.ConvertOptions(column_types=types),
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        )

    def _read_file(self, path: str, fields: list[pa.Field]) -> Iterator[pa.RecordBatch]:
        import pyarrow.csv as pacsv

        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=self.params.delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={f.name: f.type for f in fields}, include_columns=[f.name for f in fields]
            ),
        )
        yield from reader

    def total_rows(self) -> int | None:
        return None  # counting would read the whole file once more

    def spark_frame(self, spark: Any) -> Any:
        from pyspark.sql.pandas.types import from_arrow_schema

        paths = [self.location] if _has_glob(self.params.path) or len(self.paths) == 1 else self.paths
        # Arrow's inferred types, so both engines see the same columns
        frame = (
            spark.read.schema(from_arrow_schema(self.dataset.schema))
            .option("header", True)
            .option("sep", self.params.delimiter)
            .option("mode", "FAILFAST")
            .csv(paths)
        )
        return frame.select(*self.params.columns) if self.params.columns else frame


class SqlParams(Strict):
    url: str = Field(min_length=1, description="SQLAlchemy URL")
    query: str = Field(min_length=1, description="SELECT statement; :name binds from `bind`")
    bind: dict[str, Any] = Field(default_factory=dict, description="values for :name placeholders")


def sql_engine(url: str) -> Any:
    """A SQLAlchemy engine, with a connection check that turns an unreachable server or
    refused credentials into a StoreError (password never shown)."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(resolve_url(url, "url"))
    except (sa.exc.ArgumentError, ImportError, ValueError) as e:
        raise StoreError(f"not a usable SQLAlchemy URL: {e}", "url") from None
    shown = engine.url.render_as_string(hide_password=True)
    try:
        engine.connect().close()
    except sa.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StoreError(f"cannot connect: {reason}", shown) from None
    return engine


class SqlSource:
    """Rows of a query in chunks of `chunk_rows`, without loading the result at once."""

    Params = SqlParams

    def __init__(self, params: SqlParams, context: BatchContext):
        self.params = params
        self.chunk_rows = context.chunk_rows
        self.engine = sql_engine(params.url)

    def batches(self) -> Iterator[pa.RecordBatch]:
        import sqlalchemy as sa

        where = self.engine.url.render_as_string(hide_password=True)
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(stream_results=True, max_row_buffer=self.chunk_rows)
                frames = pd.read_sql(
                    sa.text(self.params.query), conn, params=self.params.bind, chunksize=self.chunk_rows
                )
                for frame in frames:
                    yield pa.RecordBatch.from_pandas(frame, preserve_index=False)
        except sa.exc.OperationalError as e:
            raise StoreError(f"query failed: {str(e.orig).strip().splitlines()[0]}", where) from None
        except sa.exc.SQLAlchemyError as e:
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise DataError(f"query failed: {reason}", "data.source.params.query") from None


class EntityFileParams(Strict):
    path: str | None = Field(None, description="CSV/Parquet file listing the rows")
    rows: list[dict[str, Any]] | None = Field(None, description="the rows inline")

    @model_validator(mode="after")
    def _one(self) -> EntityFileParams:
        if (self.path is None) == (self.rows is None):
            raise ValueError("give exactly one of path or rows")
        return self


def _entity_frames(params: EntityFileParams, context: BatchContext, chunk: int) -> Iterator[pd.DataFrame]:
    if params.rows is not None:
        frame = pd.DataFrame(params.rows)
        for start in range(0, len(frame), chunk):
            yield frame.iloc[start : start + chunk].reset_index(drop=True)
        return
    assert params.path is not None
    cls = CsvSource if params.path.lower().endswith(".csv") else ParquetSource
    for batch in cls(cls.Params(path=params.path), context).batches():
        yield batch.to_pandas()


class FeastSource:
    """Point-in-time correct features (the project's Feast offline store) for (entity, time)
    rows given with the project's own column names: backfills and what-if scoring."""

    Params = EntityFileParams

    def __init__(self, params: EntityFileParams, context: BatchContext):
        from tsops.features.store import FeatureStoreClient

        self.params = params
        self.context = context
        self.client = FeatureStoreClient(context.project)
        series = context.project.settings.series
        self.columns = [series.entity_col, series.time]

    def batches(self) -> Iterator[pa.RecordBatch]:
        for frame in _entity_frames(self.params, self.context, self.context.chunk_rows):
            missing = [c for c in self.columns if c not in frame.columns]
            if missing:
                raise DataError(f"the entity rows lack column(s) {missing}", "data.source.params")
            frame = frame[self.columns].copy()
            frame[self.columns[1]] = pd.to_datetime(frame[self.columns[1]])
            features = self.client.historical(frame)
            yield pa.RecordBatch.from_pandas(features, preserve_index=False)


class EntitiesParams(Strict):
    ids: list[str] | None = Field(None, description="entity ids inline")
    path: str | None = Field(None, description="CSV/Parquet file with an entity column")
    column: str | None = Field(None, description="entity column of `path` (default: the project's)")

    @model_validator(mode="after")
    def _one(self) -> EntitiesParams:
        if (self.ids is None) == (self.path is None):
            raise ValueError("give exactly one of ids or path")
        return self


class EntitiesSource:
    """For tsops forecasters: each entity's current feature row from the online store (the
    serving path's reader), with its origin time; the model turns it into a forecast. An id
    the store has no complete row for is rejected with that reason, not dropped."""

    Params = EntitiesParams
    READ_ROWS = 1000

    def __init__(self, params: EntitiesParams, context: BatchContext):
        from tsops.features.online import OnlineFeatures

        self.params = params
        self.context = context
        self.online = OnlineFeatures(context.project)
        series = context.project.settings.series
        self.entity_col, self.time_col = series.entity_col, series.time

    def _ids(self) -> Iterator[list[str]]:
        step = self.READ_ROWS
        if self.params.ids is not None:
            for start in range(0, len(self.params.ids), step):
                yield [str(e) for e in self.params.ids[start : start + step]]
            return
        column = self.params.column or self.entity_col
        files = EntityFileParams(path=self.params.path)
        for frame in _entity_frames(files, self.context, step):
            if column not in frame.columns:
                raise DataError(f"no entity column {column!r}", "data.source.params.column")
            ids = frame[column].astype(str).tolist()
            for start in range(0, len(ids), step):
                yield ids[start : start + step]

    def batches(self) -> Iterator[pa.RecordBatch]:
        names = self.online.names
        for ids in self._ids():
            matrix, origins = self.online.lookup(ids, names)
            columns: dict[str, Any] = {
                self.entity_col: pa.array(ids, pa.string()),
                self.time_col: pa.array(
                    [o.replace(tzinfo=None) if o else None for o in origins], pa.timestamp("us")
                ),
            }
            for i, name in enumerate(names):
                columns[name] = pa.array(matrix[:, i])
            columns[REJECT_COLUMN] = pa.array(
                [None if o else "no complete feature row in the online store" for o in origins],
                pa.string(),
            )
            yield pa.RecordBatch.from_pydict(columns)


SOURCES: dict[str, type] = {
    "parquet": ParquetSource,
    "csv": CsvSource,
    "sql": SqlSource,
    "feast": FeastSource,
    "entities": EntitiesSource,
}
