"""The stored monitoring history: periodic snapshots of online accuracy and drift in two SQL
tables (SQLAlchemy; SQLite under `.tsops/` by default, `monitoring.database` for a URL).

`tsops_accuracy`: one row per (snapshot time, model version, horizon step) with the rolling MAE
and how many errors it averages; `step` 0 is the mean over all steps.
`tsops_drift`: one row per (snapshot time, feature) with the drift score (PSI) against the
reference of `model_version`.
`tsops_coverage`: one row per (snapshot time, model version, interval level, horizon step) with
the rolling share of actuals inside the forecasts' interval and how many it rests on; `step` 0
is the mean over all steps. (A table of its own, so a database from before it needs no migration.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tsops.errors import StoreError
from tsops.secrets import resolve_url
from tsops.settings import Project
from tsops.sqltables import create_tables

ALL_STEPS = 0  # the `step` of the mean over all horizon steps

_meta = sa.MetaData()
ACCURACY = sa.Table(
    "tsops_accuracy",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False, index=True),  # wall clock, UTC
    sa.Column("event_time", sa.DateTime, nullable=True),  # latest actual's event time, UTC
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("mae", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
)
DRIFT = sa.Table(
    "tsops_drift",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False, index=True),
    sa.Column("event_time", sa.DateTime, nullable=True),
    sa.Column("model_version", sa.Integer, nullable=False),  # whose training reference
    sa.Column("feature", sa.String(200), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
)
COVERAGE = sa.Table(
    "tsops_coverage",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False, index=True),
    sa.Column("event_time", sa.DateTime, nullable=True),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("level", sa.String(20), nullable=False),  # "80", "95"
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("coverage", sa.Float, nullable=False),  # share of actuals inside, 0..1
    sa.Column("n", sa.Integer, nullable=False),
)


@dataclass(frozen=True)
class AccuracyRow:
    at: datetime
    event_time: datetime | None
    model_version: int
    step: int  # 1..H, or ALL_STEPS
    mae: float
    n: int  # errors in the window (per step; for step 0 the smallest per-step count)

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class CoverageRow:
    at: datetime
    event_time: datetime | None
    model_version: int
    level: str  # the interval level in percent, as the records key it ("80")
    step: int  # 1..H, or ALL_STEPS
    coverage: float  # share of actuals inside the interval
    n: int  # actuals with a bound in the window (per step; for step 0 the smallest per-step count)

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class DriftRow:
    at: datetime
    event_time: datetime | None
    model_version: int
    feature: str
    score: float
    n: int  # observations in the window

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def database_url(project: Project) -> str:
    return project.settings.monitoring.database or f"sqlite:///{project.state_dir / 'monitoring.db'}"


class MonitorHistory:
    """Read and write the history tables (created on first use)."""

    def __init__(self, url: str):
        self.url = url
        try:
            self.engine = sa.create_engine(resolve_url(url, "monitoring.database"))
            if self.engine.dialect.name == "sqlite":
                # WAL: the dashboard and `tsops monitor` read while the stream writes.
                sa.event.listen(self.engine, "connect", _sqlite_wal)
            create_tables(_meta, self.engine)
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot use the monitoring database: {e}", "monitoring.database") from None

    @classmethod
    def for_project(cls, project: Project) -> MonitorHistory:
        project.state_dir.mkdir(parents=True, exist_ok=True)
        return cls(database_url(project))

    def write(
        self,
        accuracy: Iterable[AccuracyRow],
        drift: Iterable[DriftRow],
        coverage: Iterable[CoverageRow] = (),
    ) -> None:
        """Append rows in one transaction."""
        acc = [asdict(r) for r in accuracy]
        dft = [asdict(r) for r in drift]
        cov = [asdict(r) for r in coverage]
        with self.engine.begin() as conn:
            if acc:
                conn.execute(ACCURACY.insert(), acc)
            if dft:
                conn.execute(DRIFT.insert(), dft)
            if cov:
                conn.execute(COVERAGE.insert(), cov)

    def accuracy(
        self,
        *,
        since: datetime | None = None,
        version: int | None = None,
        step: int | None = None,
    ) -> list[AccuracyRow]:
        """Accuracy rows, oldest first, optionally from `since`, for one version or step."""
        query = sa.select(*_columns(ACCURACY)).order_by(ACCURACY.c.at, ACCURACY.c.id)
        if since is not None:
            query = query.where(ACCURACY.c.at >= since)
        if version is not None:
            query = query.where(ACCURACY.c.model_version == version)
        if step is not None:
            query = query.where(ACCURACY.c.step == step)
        with self.engine.connect() as conn:
            return [AccuracyRow(**r._mapping) for r in conn.execute(query)]

    def drift(self, *, since: datetime | None = None, feature: str | None = None) -> list[DriftRow]:
        """Drift rows, oldest first, optionally from `since` or for one feature."""
        query = sa.select(*_columns(DRIFT)).order_by(DRIFT.c.at, DRIFT.c.id)
        if since is not None:
            query = query.where(DRIFT.c.at >= since)
        if feature is not None:
            query = query.where(DRIFT.c.feature == feature)
        with self.engine.connect() as conn:
            return [DriftRow(**r._mapping) for r in conn.execute(query)]

    def latest_accuracy(self) -> list[AccuracyRow]:
        """The most recent row of every (model version, step)."""
        return self._latest(ACCURACY, ("model_version", "step"), AccuracyRow)  # type: ignore[return-value]

    def latest_coverage(self) -> list[CoverageRow]:
        """The most recent row of every (model version, level, step)."""
        return self._latest(COVERAGE, ("model_version", "level", "step"), CoverageRow)  # type: ignore[return-value]

    def latest_drift(self) -> list[DriftRow]:
        """The most recent row of every feature."""
        return self._latest(DRIFT, ("feature",), DriftRow)  # type: ignore[return-value]

    def _latest(self, table: sa.Table, keys: tuple[str, ...], row: type) -> list[Any]:
        newest = (
            sa.select(sa.func.max(table.c.id).label("id")).group_by(*(table.c[k] for k in keys)).subquery()
        )
        query = (
            sa.select(*_columns(table))
            .join(newest, table.c.id == newest.c.id)
            .order_by(*(table.c[k] for k in keys))
        )
        with self.engine.connect() as conn:
            return [row(**r._mapping) for r in conn.execute(query)]

    def prune(self, older_than: timedelta, now: datetime) -> int:
        """Delete rows older than `now - older_than`; returns how many."""
        cutoff = now - older_than
        with self.engine.begin() as conn:
            a = conn.execute(ACCURACY.delete().where(ACCURACY.c.at < cutoff)).rowcount
            d = conn.execute(DRIFT.delete().where(DRIFT.c.at < cutoff)).rowcount
            c = conn.execute(COVERAGE.delete().where(COVERAGE.c.at < cutoff)).rowcount
        return int(a or 0) + int(d or 0) + int(c or 0)

    def close(self) -> None:
        self.engine.dispose()


def _columns(table: sa.Table) -> list[sa.Column[Any]]:
    return [c for c in table.c if c.name != "id"]


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
