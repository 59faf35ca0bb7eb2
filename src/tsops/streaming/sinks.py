"""Record sinks: one small interface, a registry by name (`file`, `kafka`, `sql`).

`write` returns only when the records are durable (fsync, broker ack, committed
transaction); the processor commits source offsets after that.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
import pandas as pd

from tsops.errors import raise_if_disk_full
from tsops.secrets import resolve_url
from tsops.settings import Project, SinkSettings


class Sink(Protocol):
    def write(self, records: Sequence[Mapping[str, Any]]) -> None: ...

    def close(self) -> None: ...


STREAM_RESUMES = "free space and run the stream again: it resumes from its last checkpoint, nothing is lost"


def encode(record: Mapping[str, Any]) -> bytes:
    """One record as compact JSON (orjson: the sinks' hot path, ~10x the stdlib encoder)."""
    return orjson.dumps(record, default=str)


def _resolve(project: Project, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else project.root / p


def _drop_torn_tail(path: Path) -> None:
    """A crash mid-write can leave a partial last line; it was never acknowledged (offsets
    were not committed), so it is replayed: cut it off instead of appending after it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


class FileSink:
    """JSONL (appended, fsynced) or Parquet (a folder of part files, one per batch)."""

    def __init__(self, project: Project, cfg: SinkSettings):
        assert cfg.path
        self.path = _resolve(project, cfg.path)
        self.parquet = self.path.suffix.lower() == ".parquet"
        (self.path if self.parquet else self.path.parent).mkdir(parents=True, exist_ok=True)
        if not self.parquet:
            _drop_torn_tail(self.path)
        self._handle = None if self.parquet else self.path.open("ab")
        self._failed = False

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        try:
            self._write(records)
        except OSError as e:
            self._failed = True
            raise_if_disk_full(e, self.path, STREAM_RESUMES)
            raise

    def _write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        if self.parquet:
            part = self.path / f"part-{uuid.uuid4().hex}.parquet"
            tmp = part.with_suffix(".tmp")
            with tmp.open("wb") as f:
                pd.DataFrame(records).to_parquet(f, index=False)
                f.flush()
                os.fsync(f.fileno())  # durable before it gets its name
            os.replace(tmp, part)
            return
        assert self._handle is not None
        self._handle.write(b"\n".join(map(encode, records)) + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle:
            try:
                self._handle.close()
            except OSError:
                if not self._failed:
                    raise  # else: the rest of a failed batch, replayed from the last checkpoint


class KafkaSink:
    """Produces each record as JSON, keyed by its entity; waits for the broker's acks."""

    def __init__(self, project: Project, cfg: SinkSettings):
        from confluent_kafka import Producer

        from tsops.kafka import ensure_topic, producer_config

        assert cfg.topic
        self.topic = cfg.topic
        ensure_topic(project.settings.stream.kafka, cfg.topic)
        self.producer = Producer(producer_config(project.settings.stream.kafka))
        self._failed: list[str] = []

    def _ack(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            key = str(r.get("entity", ""))
            self.producer.produce(self.topic, encode(r), key.encode(), on_delivery=self._ack)
            self.producer.poll(0)
        while self.producer.flush(1.0) > 0:  # rides out a broker pause; never drops
            pass
        if self._failed:
            errors, self._failed = self._failed, []
            raise OSError(f"kafka sink {self.topic}: {len(errors)} record(s) failed: {errors[0]}")

    def close(self) -> None:
        self.producer.flush(10)


class SqlSink:
    """Rows keyed by the record's idempotency key: a replayed record replaces itself."""

    def __init__(self, project: Project, cfg: SinkSettings):
        import sqlalchemy as sa

        from tsops.sqltables import create_tables

        assert cfg.url and cfg.table
        self.engine = sa.create_engine(resolve_url(cfg.url, "stream sink url"))
        meta = sa.MetaData()
        self.table = sa.Table(
            cfg.table,
            meta,
            sa.Column("key", sa.String(512), primary_key=True),
            sa.Column("entity", sa.String(256), index=True),
            sa.Column("event_time", sa.String(64)),
            sa.Column("kind", sa.String(64)),
            sa.Column("record", sa.Text),
        )
        create_tables(meta, self.engine)

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        rows = {}
        for r in records:
            key = str(r.get("key") or uuid.uuid4().hex)
            rows[key] = {
                "key": key,
                "entity": str(r.get("entity", "")),
                "event_time": str(r.get("event_time", "")),
                "kind": str(r.get("error", "prediction")),
                "record": encode(r).decode(),
            }
        with self.engine.begin() as conn:  # one transaction per batch
            conn.execute(self.table.delete().where(self.table.c.key.in_(list(rows))))
            conn.execute(self.table.insert(), list(rows.values()))

    def close(self) -> None:
        self.engine.dispose()


SINKS: dict[str, Callable[[Project, SinkSettings], Sink]] = {
    "file": FileSink,
    "kafka": KafkaSink,
    "sql": SqlSink,
}


def build(project: Project, cfg: SinkSettings) -> Sink:
    return SINKS[cfg.type](project, cfg)
