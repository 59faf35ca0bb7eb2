"""Batch targets: one small interface, a registry by name.

Every target is all-or-nothing: `open` starts a run, `write` adds record batches, `commit`
publishes them at once, `abort` leaves what was there before. A rerun replaces the previous
run's output and never duplicates it.

| name | commit |
|---|---|
| `parquet`, `csv` | a hidden temporary file in the same folder, fsynced, renamed over the path |
| `sql` | one transaction: the table (or the run's partition of rows) is replaced |
| `kafka` | one Kafka transaction, keyed records (see docs/batch.md for what a rerun means there) |
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
from pydantic import Field

from tsops.batch.plugins import BatchContext
from tsops.batch.sources import sql_engine
from tsops.errors import DataError, StoreError
from tsops.settings import KafkaSettings, Strict


class Target(Protocol):
    def open(self, schema: pa.Schema) -> None: ...

    def write(self, batch: pa.RecordBatch) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


def publish(tmp: Path, path: Path) -> None:
    """Put `tmp` (a file or a folder) in place of `path`. File over file is one atomic rename;
    a folder (Spark's output) is swapped with two renames, never leaving a half-written one."""
    if (path.is_dir() and not path.is_symlink()) or (path.exists() and tmp.is_dir()):
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# What Spark leaves in an output folder: a folder holding only these is one this target wrote.
_SPARK_OUTPUT = ("part-", ".part-", "_SUCCESS", "._SUCCESS", "_committed_", "_started_")


def check_file_target(path: Path, where: str = "data.target.params.path") -> None:
    """Refuse, before any work, a target path whose publish would destroy something this target
    did not write: a folder that is not Spark output of its own, a device or other special
    file, a symlink; and a folder that cannot be written to."""
    if path.is_symlink():
        raise DataError(f"{path} is a symbolic link; give the path of a file to write", where)
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            entries = [e.name for e in path.iterdir()]
            if not entries or not all(e.startswith(_SPARK_OUTPUT) for e in entries):
                raise DataError(
                    f"{path} is a folder{'' if entries else ' (empty)'} that this target did not "
                    "write; it would be replaced by the output. Give a file path inside it "
                    "(e.g. out.parquet)",
                    where,
                )
        elif not stat.S_ISREG(mode):
            kind = "a device, pipe or socket"
            raise DataError(f"{path} is not a regular file ({kind}); give a file path", where)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"cannot write in {folder}: the folder is read-only or not ours", where)


def _writing(path: Path) -> contextlib.AbstractContextManager[None]:
    """OSError while writing `path` (disk full, read-only, permission) as a DataError naming it."""

    @contextlib.contextmanager
    def guard() -> Any:
        try:
            yield
        except OSError as e:
            reason = e.strerror or str(e)
            raise DataError(f"cannot write the output: {reason}", str(path)) from None

    return guard()


class FileParams(Strict):
    path: str = Field(min_length=1, description="output file (Spark engine: a folder of part files)")


class CsvParams(FileParams):
    delimiter: str = Field(",", min_length=1, max_length=1)


class FileTarget:
    """One Parquet or CSV file, written through a temporary name and renamed at commit."""

    format: Literal["parquet", "csv"] = "parquet"
    Params: type[FileParams] = FileParams

    def __init__(self, params: FileParams, context: BatchContext):
        self.params = params
        self.path = context.path(params.path)
        check_file_target(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{context.run_id or os.getpid()}")
        self._writer: Any = None

    def _clear_stale(self) -> None:
        """Temporary files of runs killed without a chance to clean up (SIGKILL)."""
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            remove(stale)
        for stale in self.path.parent.glob(f".{self.path.name}.old-*"):
            remove(stale)

    def open(self, schema: pa.Schema) -> None:
        with _writing(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._clear_stale()
            self._writer = self._make_writer(schema)

    def _make_writer(self, schema: pa.Schema) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetWriter(self.tmp, schema, use_dictionary=dictionary_columns(schema))

    def write(self, batch: pa.RecordBatch) -> None:
        with _writing(self.path):
            self._writer.write_batch(batch)

    def commit(self) -> None:
        with _writing(self.path):
            self._writer.close()
            self._writer = None
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            publish(self.tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        remove(self.tmp)

    def write_spark(self, frame: Any) -> None:
        """Spark engine: the executors write a folder of part files, renamed into place."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        try:
            self._spark_writer(frame.write.mode("overwrite"))
        except BaseException:
            remove(self.tmp)
            raise
        publish(self.tmp, self.path)

    def _spark_writer(self, writer: Any) -> None:
        writer.parquet(str(self.tmp))


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode text and time columns only: on float columns (predictions) Parquet
    tries a dictionary per row group and gives it up, which made writing 3x slower."""
    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_timestamp, pa.types.is_date)
    return [f.name for f in schema if any(kind(f.type) for kind in kinds)]


class ParquetTarget(FileTarget):
    format = "parquet"


class CsvTarget(FileTarget):
    format = "csv"
    Params = CsvParams
    params: CsvParams

    def _make_writer(self, schema: pa.Schema) -> Any:
        import pyarrow.csv as pacsv

        options = pacsv.WriteOptions(delimiter=self.params.delimiter)
        return pacsv.CSVWriter(self.tmp, schema, write_options=options)

    def _spark_writer(self, writer: Any) -> None:
        writer.option("header", True).option("sep", self.params.delimiter).csv(str(self.tmp))


class SqlParams(Strict):
    url: str = Field(min_length=1, description="SQLAlchemy URL")
    table: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    db_schema: str | None = Field(None, description="database schema of the table")
    mode: Literal["replace", "partition"] = Field(
        "replace", description="replace: the whole table; partition: the rows matching `partition`"
    )
    partition: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="partition mode: columns and values added to every row"
    )


def _sql_type(field: pa.Field) -> Any:
    import sqlalchemy as sa

    t = field.type
    if pa.types.is_integer(t):
        return sa.BigInteger()
    if pa.types.is_floating(t):
        return sa.Float(precision=53)
    if pa.types.is_boolean(t):
        return sa.Boolean()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return sa.Text()
    if pa.types.is_timestamp(t):
        return sa.DateTime(timezone=t.tz is not None)
    if pa.types.is_date(t):
        return sa.Date()
    raise DataError(f"column type {t} has no SQL mapping; cast it or leave it out (keep:)", field.name)


class SqlTarget:
    """A table written inside one transaction: readers see the previous run's rows until the
    commit, then all of this run's. On PostgreSQL rows go in with COPY."""

    Params = SqlParams

    def __init__(self, params: SqlParams, context: BatchContext):
        if params.mode == "partition" and not params.partition:
            raise DataError("mode partition needs `partition: {column: value}`", "data.target.params")
        self.params = params
        self.engine = sql_engine(params.url)
        self._conn: Any = None
        self._trans: Any = None

    def open(self, schema: pa.Schema) -> None:
        import sqlalchemy as sa

        p = self.params
        for name, value in p.partition.items():
            schema = schema.append(pa.field(name, pa.scalar(value).type))
        meta = sa.MetaData(schema=p.db_schema)
        self.table = sa.Table(p.table, meta, *(sa.Column(f.name, _sql_type(f)) for f in schema))
        self.columns = schema.names
        self._conn = self.engine.connect()
        self._trans = self._conn.begin()
        try:
            if p.mode == "replace":
                self.table.drop(self._conn, checkfirst=True)
                self.table.create(self._conn)
            else:
                self.table.create(self._conn, checkfirst=True)
                cond = sa.and_(*(self.table.c[k] == v for k, v in p.partition.items()))
                self._conn.execute(self.table.delete().where(cond))
        except sa.exc.SQLAlchemyError as e:
            self.abort()
            raise StoreError(f"cannot prepare table: {str(getattr(e, 'orig', e)).strip()}", p.table) from None

    def write(self, batch: pa.RecordBatch) -> None:
        for name, value in self.params.partition.items():
            batch = batch.append_column(name, pa.array([value] * batch.num_rows))
        if self.engine.dialect.name == "postgresql":
            self._copy(batch)
        else:
            self._conn.execute(self.table.insert(), batch.to_pylist())

    def _copy(self, batch: pa.RecordBatch) -> None:
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(batch, buf, write_options=pacsv.WriteOptions(include_header=False))
        buf.seek(0)
        quote = self.engine.dialect.identifier_preparer.quote
        name = quote(self.params.table)
        if self.params.db_schema:
            name = f"{quote(self.params.db_schema)}.{name}"
        cols = ", ".join(quote(c) for c in self.columns)
        statement = f"COPY {name} ({cols}) FROM STDIN WITH (FORMAT csv)"
        cursor = self._conn.connection.dbapi_connection.cursor()
        try:
            if hasattr(cursor, "copy_expert"):  # psycopg2
                cursor.copy_expert(statement, buf)
            else:  # psycopg 3, SQLAlchemy 2.1's default driver for postgresql://
                with cursor.copy(statement) as copy:
                    copy.write(buf.getvalue())
        finally:
            cursor.close()

    def commit(self) -> None:
        self._trans.commit()
        self._conn.close()

    def abort(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._trans.rollback()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class KafkaParams(Strict):
    topic: str = Field(min_length=1)
    key: list[str] = Field(min_length=1, description="columns whose values make the record key")
    bootstrap_servers: str | None = Field(None, description="default: the project's stream.kafka")
    partitions: int = Field(4, ge=1, description="when the topic has to be created")
    transactional_id: str | None = Field(None, description="default: tsops-batch-<topic>")
    transaction_timeout_ms: int = Field(900_000, ge=1000)
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict, description="more librdkafka")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


class KafkaTarget:
    """One JSON record per output row, keyed by the `key` columns, inside one Kafka
    transaction. `staged`: the runner hands over rows only after every chunk succeeded, so a
    failed run produces nothing; a transaction aborted mid-publish is invisible to
    read_committed consumers. A rerun re-sends the same keys: consumers (or a compacted
    topic) keep the latest record per key."""

    Params = KafkaParams
    staged = True

    def __init__(self, params: KafkaParams, context: BatchContext):
        self.params = params
        self.run_id = context.run_id
        base = context.project.settings.stream.kafka if context.project_dir else KafkaSettings()
        self.kafka = KafkaSettings(
            bootstrap_servers=params.bootstrap_servers or base.bootstrap_servers,
            extra={**base.extra, **params.extra},
        )
        self._failed: list[str] = []
        self.producer: Any = None

    def open(self, schema: pa.Schema) -> None:
        from confluent_kafka import KafkaException, Producer

        from tsops.kafka import ensure_topic, producer_config

        missing = [k for k in self.params.key if k not in schema.names]
        if missing:
            raise DataError(f"key column(s) {missing} are not in the output {schema.names}", "key")
        config = {
            **producer_config(self.kafka),
            "enable.idempotence": True,  # required by transactions
            "transactional.id": self.params.transactional_id or f"tsops-batch-{self.params.topic}",
            "transaction.timeout.ms": self.params.transaction_timeout_ms,
            "linger.ms": 20,
        }
        try:
            ensure_topic(self.kafka, self.params.topic, self.params.partitions)
            self.producer = Producer(config)
            # fences a previous producer with the same id: its open transaction is aborted
            self.producer.init_transactions(30)
            self.producer.begin_transaction()
        except KafkaException as e:
            raise StoreError(f"kafka: {e.args[0]}", self.kafka.bootstrap_servers) from None

    def _ack(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def write(self, batch: pa.RecordBatch) -> None:
        key_cols = self.params.key
        headers = [("tsops.run_id", self.run_id.encode())]
        for row in batch.to_pylist():
            key = "|".join(str(row[k]) for k in key_cols).encode()
            value = json.dumps(row, default=_json_default).encode()
            while True:
                try:
                    self.producer.produce(
                        self.params.topic, value, key, headers=headers, on_delivery=self._ack
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.producer.poll(0.1)
            self.producer.poll(0)
        if self._failed:
            raise StoreError(f"kafka: {len(self._failed)} record(s) failed: {self._failed[0]}", "kafka")

    def commit(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self.producer.commit_transaction(60)
        except KafkaException as e:
            raise StoreError(f"kafka: commit failed: {e.args[0]}", self.params.topic) from None
        if self._failed:
            raise StoreError(f"kafka: {len(self._failed)} record(s) failed: {self._failed[0]}", "kafka")

    def abort(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                self.producer.abort_transaction(30)
            self.producer = None


TARGETS: dict[str, type] = {
    "parquet": ParquetTarget,
    "csv": CsvTarget,
    "sql": SqlTarget,
    "kafka": KafkaTarget,
}
