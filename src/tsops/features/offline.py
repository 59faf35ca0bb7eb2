"""Offline stores: where the history with its features lives, for training, backfill and the
stream's log of observations. One small interface, two stores selected by `stores.offline.type`:

- `file` (embedded default): one Parquet file under `.tsops/offline/`, read by Feast's DuckDB
  store; the stream appends part files that a compaction merges.
- `postgres` (cluster mode): one PostgreSQL table keyed on (entity, time), read by Feast's
  PostgreSQL store; the stream appends with `ON CONFLICT DO NOTHING`, so a replayed
  observation lands once and no process reads a file another wrote.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import time_ns
from typing import Any, Protocol

import pandas as pd

from tsops.errors import CorruptFile, DiskFull, StoreError, raise_if_disk_full
from tsops.secrets import redacted, resolve_url
from tsops.settings import OfflineStoreSettings, Project

SEQ = "tsops_seq"  # PostgreSQL: each row's insertion number
QUARANTINE = "quarantine"  # the file store: unreadable stream parts are moved here

log = logging.getLogger("tsops.offline")


def read_parquet_file(path: Path, what: str, fix: str) -> pd.DataFrame:
    """`pd.read_parquet`, with an unreadable file (truncated, half-written, not Parquet) as a
    `CorruptFile` naming it and `fix`, never a pyarrow traceback naming no file."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        if isinstance(e, FileNotFoundError):
            raise
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        message = f"{what} cannot be read ({reason})" + (f"; {fix}" if fix else "")
        raise CorruptFile(message, str(path)) from None


class OfflineStore(Protocol):
    """The offline store's contract: every method keys rows on (entity, time)."""

    def feast_config(self, *, resolved: bool) -> dict[str, Any]:
        """The `offline_store` section of Feast's repo config (secrets as placeholders unless
        `resolved`: the file on disk never holds them)."""
        ...

    def write(self, features: pd.DataFrame) -> None:
        """Replace the whole store with `features` (atomic: a failed write keeps the old)."""
        ...

    def append(self, rows: pd.DataFrame) -> None:
        """Durably add stream observations; a row already there (same entity, time) is kept once."""
        ...

    def compact(self) -> int:
        """Fold appended rows into what `read` and Feast see; rows added."""
        ...

    def read(self) -> pd.DataFrame:
        """Every row, sorted by (entity, time), time tz-naive UTC."""
        ...


@dataclass
class Columns:
    entity: str
    time: str
    target: str


class ParquetOfflineStore:
    """One Parquet file (replaced atomically) plus the stream's part files, merged on `compact`."""

    def __init__(self, path: Path, columns: Columns):
        self.path = path
        self.columns = columns

    def feast_config(self, *, resolved: bool) -> dict[str, Any]:
        return {"type": "duckdb"}

    @property
    def parts(self) -> Path:
        return self.path.parent / "stream"

    def write(self, features: pd.DataFrame) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".parquet.{os.getpid()}.{time_ns()}.tmp")  # writers never share it
        frame = features.copy()
        time = self.columns.time
        # Microsecond UTC: DuckDB cannot cast nanosecond TIMESTAMPTZ in Feast's queries.
        frame[time] = pd.to_datetime(frame[time]).dt.tz_localize("UTC").astype("datetime64[us, UTC]")
        try:
            frame.to_parquet(tmp, index=False)
        except OSError as e:
            tmp.unlink(missing_ok=True)  # a partial file would hold on to the space that is short
            raise_if_disk_full(e, self.path, "the offline store is unchanged; free space and run again")
            raise
        os.replace(tmp, self.path)

    def append(self, rows: pd.DataFrame) -> None:
        """One part file per call; the next `compact` merges the parts into the store."""
        self.parts.mkdir(parents=True, exist_ok=True)
        part = self.parts / f"part-{time_ns()}.parquet"
        tmp = part.with_suffix(".tmp")
        try:
            rows.to_parquet(tmp, index=False)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise_if_disk_full(e, self.parts, "free space and run again: what was not appended is replayed")
            raise
        os.replace(tmp, part)

    @contextmanager
    def _compacting(self) -> Iterator[None]:
        """One compaction at a time across processes (training, `tsops monitor --report` and a
        stream's end can run at once): two of them reading different part lists could otherwise
        write back an older merge after the other deleted parts it had merged."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / ".compact.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _readable(self, parts: list[Path]) -> tuple[list[pd.DataFrame], list[Path]]:
        """The parts that can be read; an unreadable one (a torn write, a bad disk) is moved to
        `stream/quarantine/` and reported, instead of failing every later command."""
        frames, readable = [], []
        for part in parts:
            try:
                frames.append(read_parquet_file(part, "stream part", ""))
                readable.append(part)
            except CorruptFile as e:
                aside = self.parts / QUARANTINE / part.name
                aside.parent.mkdir(exist_ok=True)
                os.replace(part, aside)
                log.warning("quarantined an unreadable stream part: %s → %s (%s)", part, aside, e.message)
        return frames, readable

    def compact(self) -> int:
        """A replayed observation appears twice in the parts and once after compaction."""
        with self._compacting():
            parts = sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else []
            if not parts:
                return 0
            key = [self.columns.entity, self.columns.time]
            base = self.read()
            frames, parts = self._readable(parts)
            if not frames:
                return 0
            added = pd.concat(frames, ignore_index=True)
            added[self.columns.time] = pd.to_datetime(added[self.columns.time])
            merged = pd.concat([base, added[base.columns]], ignore_index=True)
            merged = merged.drop_duplicates(key, keep="last").sort_values(key, kind="stable")
            try:
                self.write(merged.reset_index(drop=True))
            except DiskFull as e:  # the parts stay: the next compaction (stream end, train) merges them
                e.message = (
                    f"disk full at {self.path}: {len(parts)} stream part(s) in {self.parts} not merged "
                    "yet (nothing is lost); free space and run `tsops train` or the stream again"
                )
                raise
            for p in parts:
                p.unlink()
            return len(merged) - len(base)

    def read(self) -> pd.DataFrame:
        if not self.path.exists():
            raise StoreError("the offline store is empty; run `tsops ingest` first", str(self.path))
        frame = read_parquet_file(
            self.path,
            "the offline store",
            "rebuild it from the history file with `tsops ingest --replace` (observations the "
            "stream added since the last ingest are lost with it)",
        )
        time = self.columns.time
        frame[time] = pd.to_datetime(frame[time]).dt.tz_convert("UTC").dt.tz_localize(None)
        return frame


class PostgresOfflineStore:
    """One table, primary key (entity, time): `write` replaces it in one transaction (readers
    see the old rows until it commits), `append` inserts what is not there yet."""

    def __init__(self, settings: OfflineStoreSettings, columns: Columns):
        from sqlalchemy.engine import make_url

        assert settings.url is not None  # validated by the settings
        self.settings = settings
        self.columns = columns
        self.where = "stores.offline.url"
        self.shown = redacted(settings.url)
        self._placeholder_url = make_url(settings.url)
        self._conn: Any = None

    def _url(self) -> Any:
        from sqlalchemy.engine import make_url

        return make_url(resolve_url(self.settings.url or "", self.where))

    def feast_config(self, *, resolved: bool) -> dict[str, Any]:
        url = self._url() if resolved else self._placeholder_url
        return {
            "type": "postgres",
            "host": url.host or "127.0.0.1",
            "port": int(url.port or 5432),
            "database": url.database or "postgres",
            "db_schema": self.settings.db_schema,
            "user": url.username or "",
            "password": url.password or "",
            "sslmode": str(url.query.get("sslmode", "prefer")),
        }

    def connect(self) -> Any:
        """A psycopg2 connection (kept for the next call; a lost one is replaced)."""
        import psycopg2

        if self._conn is not None and not self._conn.closed:
            return self._conn
        url = self._url()
        try:
            self._conn = psycopg2.connect(
                host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                dbname=url.database, connect_timeout=10, sslmode=url.query.get("sslmode", "prefer"),
                options=f"-c search_path={self.settings.db_schema} -c TimeZone=UTC",
            )  # fmt: skip
        except psycopg2.OperationalError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            message = f"cannot reach the PostgreSQL offline store {self.shown}: {reason}"
            raise StoreError(message, self.where) from None
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        import psycopg2

        conn = self.connect()
        try:
            with conn, conn.cursor() as cur:  # commits, or rolls back on an error
                yield cur
        except psycopg2.OperationalError as e:
            conn.close()  # the next call connects again
            message = f"the PostgreSQL offline store {self.shown} failed: {e}".strip()
            raise StoreError(message, self.where) from None

    @property
    def table(self) -> str:
        return self.settings.table

    def _ddl(self, columns: list[str]) -> str:
        ent, time = self.columns.entity, self.columns.time
        body = [f'"{ent}" TEXT NOT NULL', f'"{time}" TIMESTAMPTZ NOT NULL']
        body += [f'"{c}" DOUBLE PRECISION' for c in columns if c not in (ent, time)]
        body.append(f'"{SEQ}" BIGSERIAL')  # insertion order, for readers that tail the table
        body.append(f'PRIMARY KEY ("{ent}", "{time}")')
        return f'CREATE TABLE IF NOT EXISTS "{self.table}" ({", ".join(body)})'

    def _csv(self, frame: pd.DataFrame) -> io.BytesIO:
        """COPY's input, written by Arrow's CSV writer (round-trip floats, NaN as an empty
        field = NULL, UTC times): ~20x faster than pandas' `to_csv` on a checkpoint's rows."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        out = frame.copy()
        time = self.columns.time
        out[time] = pd.to_datetime(out[time]).dt.tz_localize("UTC").astype("datetime64[us, UTC]")
        buffer = io.BytesIO()
        table = pa.Table.from_pandas(out, preserve_index=False)
        pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        buffer.seek(0)
        return buffer

    def write(self, features: pd.DataFrame) -> None:
        columns = list(features.columns)
        names = ", ".join(f'"{c}"' for c in columns)
        with self._transaction() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{self.table}"')
            cur.execute(self._ddl(columns))
            cur.execute(f'CREATE INDEX "{self.table}_{SEQ}" ON "{self.table}" ("{SEQ}")')
            copy = f'COPY "{self.table}" ({names}) FROM STDIN WITH (FORMAT csv)'
            cur.copy_expert(copy, self._csv(features))

    def append(self, rows: pd.DataFrame) -> None:
        """Through a temporary table and one `INSERT ... ON CONFLICT DO NOTHING`: a replayed
        observation (same entity and time) lands once."""
        if not len(rows):
            return
        columns = list(rows.columns)
        names = ", ".join(f'"{c}"' for c in columns)
        ent, time = self.columns.entity, self.columns.time
        with self._transaction() as cur:
            cur.execute(self._ddl(columns))
            cur.execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS tsops_append ON COMMIT DELETE ROWS AS "
                f'SELECT {names} FROM "{self.table}" WITH NO DATA'
            )
            cur.copy_expert(f"COPY tsops_append ({names}) FROM STDIN WITH (FORMAT csv)", self._csv(rows))
            cur.execute(
                f'INSERT INTO "{self.table}" ({names}) SELECT {names} FROM tsops_append '
                f'ON CONFLICT ("{ent}", "{time}") DO NOTHING'
            )

    def compact(self) -> int:
        return 0  # appended rows are in the table already

    def read(self) -> pd.DataFrame:
        ent, time = self.columns.entity, self.columns.time
        with self._transaction() as cur:
            cur.execute("SELECT to_regclass(%s)", (f'"{self.settings.db_schema}"."{self.table}"',))
            if cur.fetchone()[0] is None:
                raise StoreError("the offline store is empty; run `tsops ingest` first", self.shown)
            buffer = io.StringIO()
            cur.copy_expert(
                f'COPY (SELECT * FROM "{self.table}" ORDER BY "{ent}", "{time}") '
                "TO STDOUT WITH (FORMAT csv, HEADER)",
                buffer,
            )
        buffer.seek(0)
        frame = pd.read_csv(buffer, dtype={ent: str}).drop(columns=[SEQ])
        frame[time] = pd.to_datetime(frame[time], utc=True, format="ISO8601").dt.tz_localize(None)
        # The database's collation may order entities unlike Python: sort here, as the file store.
        return frame.sort_values([ent, time], kind="stable").reset_index(drop=True)

    def rows_after(
        self, seq: int | None, columns: list[str], latest_steps: int, step: pd.Timedelta
    ) -> tuple[pd.DataFrame, int]:
        """Rows added after insertion number `seq` (None: the latest `latest_steps` steps of
        every entity) and the newest insertion number: how the dashboard tails the table. A
        number lower than `seq` means the table was rebuilt (re-ingested): read it anew."""
        names = ", ".join(f'"{c}"' for c in columns)
        with self._transaction() as cur:
            cur.execute(f'SELECT max("{SEQ}"), max("{self.columns.time}") FROM "{self.table}"')
            newest, latest = cur.fetchone()
            if newest is None:
                return pd.DataFrame(columns=columns), 0
            if seq is None or newest < seq:
                cutoff = latest - step.to_pytimedelta() * latest_steps
                cur.execute(f'SELECT {names} FROM "{self.table}" WHERE "{self.columns.time}" > %s', (cutoff,))
            else:
                cur.execute(
                    f'SELECT {names} FROM "{self.table}" WHERE "{SEQ}" > %s AND "{SEQ}" <= %s', (seq, newest)
                )
            rows = cur.fetchall()
        frame = pd.DataFrame(rows, columns=columns)
        return frame, int(newest)

    def row_count(self) -> int:
        with self._transaction() as cur:
            cur.execute(f'SELECT count(*) FROM "{self.table}"')
            return int(cur.fetchone()[0])


def offline_store(project: Project) -> OfflineStore:
    """The project's offline store, by `stores.offline.type`."""
    series = project.settings.series
    columns = Columns(series.entity_col, series.time, series.target)
    settings = project.settings.stores.offline
    if settings.type == "postgres":
        return PostgresOfflineStore(settings, columns)
    return ParquetOfflineStore(project.offline_path, columns)
