"""The Feast repo generated from settings, and the project's access to it.

Feature definitions are resolved once per `FeatureStoreClient`; callers on a hot path keep
the client instead of building a new `FeatureStore` per call.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from time import time_ns
from typing import Any

import pandas as pd
import yaml

from tsops.errors import ConfigError, CorruptFile, StoreError
from tsops.features.definitions import EntityState, FeatureSet
from tsops.features.offline import offline_store
from tsops.secrets import resolve_text, resolve_url
from tsops.settings import Project


def _skip_feast_runtime_typechecks() -> None:
    """Feast decorates its classes with typeguard's `@typechecked`, which re-parses their
    source at import: `import feast` took 12.4 s here, 4.5 s without it (docs/performance.md).
    tsops calls Feast with fixed, typed arguments, so we import it with the decorator as a
    no-op (what `python -O` does too). Only applies if feast was not imported before."""
    import sys

    if "feast" in sys.modules:
        return
    import typeguard

    def passthrough(target: Any = None, **_: Any) -> Any:
        return target if target is not None else (lambda f: f)

    typeguard.typechecked = passthrough


_skip_feast_runtime_typechecks()

FEATURE_VIEW = "series_features"
SOURCE_NAME = "series_history"
STATE_VIEW = "series_state"  # the incremental engine's per-entity state, for stream workers
STATE_FIELD = "state"
STATE_SOURCE = "series_state_log"
STATE_DESCRIPTION = "incremental feature state per entity (JSON)"
FEATURE_HASH_TAG = "tsops.feature_hash"
RANGE_TAG = "tsops.plausible_range"  # [low, high] the last ingest derived from the history


def repo_config_dict(project: Project, *, resolved: bool = False) -> dict[str, Any]:
    """The content of `feature_store.yaml` for this project's settings; secrets stay
    `${NAME}` placeholders (Feast expands them from the environment) unless `resolved`."""
    online = project.settings.stores.online
    state = project.state_dir
    online_store: dict[str, Any] = (
        {
            "type": "redis",
            "connection_string": resolve_text(online.connection_string, "stores.online.connection_string")
            if resolved
            else online.connection_string,
        }
        if online.type == "redis"
        else {"type": "sqlite", "path": str(state / "online.db")}
    )
    registry_url = project.settings.stores.registry_url
    registry: str | dict[str, Any] = str(state / "registry.db")
    if registry_url:
        path = resolve_url(registry_url, "stores.registry_url") if resolved else registry_url
        registry = {"registry_type": "sql", "path": path, "cache_ttl_seconds": 60}
    return {
        "project": project.settings.project,
        "registry": registry,
        "provider": "local",
        "online_store": online_store,
        "offline_store": offline_store(project).feast_config(resolved=resolved),
        "entity_key_serialization_version": 3,
    }


@dataclass(frozen=True)
class FeastDefinitions:
    """What the Feast repo registers, from settings: built into Feast objects by tsops
    (`feast_objects`) and written as plain Feast code into `feature_repo/features.py`
    (`repo_code`), so the `feast` CLI and Feast's feature server work on the repo where tsops
    is not installed."""

    entity: str
    description: str
    source_path: str
    time: str
    ttl_seconds: float
    names: tuple[str, ...]
    feature_hash: str
    state_path: str
    offline: str  # "file" or "postgres"
    table: str  # postgres: the features table

    @classmethod
    def of(cls, project: Project) -> FeastDefinitions:
        series = project.settings.series
        fs = FeatureSet(project.settings.features)
        ttl = series.step.to_pytimedelta() * project.settings.features.ttl_steps
        return cls(
            entity=series.entity_col,
            description=f"one series of {project.settings.project}",
            source_path=str(project.offline_path),
            time=series.time,
            ttl_seconds=ttl.total_seconds(),
            names=tuple(fs.names),
            feature_hash=fs.definition_hash(),
            state_path=str(project.state_dir / "offline" / "state.parquet"),
            offline=project.settings.stores.offline.type,
            table=project.settings.stores.offline.table,
        )


def feast_objects(project: Project) -> tuple[Any, ...]:
    """Entity, sources and feature views of the project: what `features.py` defines."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, String

    d = FeastDefinitions.of(project)
    entity = Entity(
        name=d.entity, join_keys=[d.entity], value_type=ValueType.STRING, description=d.description
    )
    if d.offline == "postgres":
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
            PostgreSQLSource,
        )

        source: Any = PostgreSQLSource(name=SOURCE_NAME, table=d.table, timestamp_field=d.time)
        state_source: Any = PostgreSQLSource(
            name=STATE_SOURCE, query=_empty_state_query(d), timestamp_field=d.time
        )
    else:
        source = FileSource(name=SOURCE_NAME, path=d.source_path, timestamp_field=d.time)
        state_source = FileSource(name=STATE_SOURCE, path=d.state_path, timestamp_field=d.time)
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[entity],
        ttl=timedelta(seconds=d.ttl_seconds),
        schema=[Field(name=n, dtype=Float64) for n in d.names],
        online=True,
        source=source,
        tags={FEATURE_HASH_TAG: d.feature_hash},
    )
    # Online only: stream workers write it through and read it back on partition assignment.
    state_view = FeatureView(
        name=STATE_VIEW,
        entities=[entity],
        ttl=timedelta(0),
        schema=[Field(name=STATE_FIELD, dtype=String)],
        online=True,
        source=state_source,
        description=STATE_DESCRIPTION,
    )
    return entity, source, view, state_source, state_view


def repo_code(d: FeastDefinitions) -> str:
    """`features.py`: the objects of `feast_objects`, as plain Feast code."""
    fields = "".join(f"        Field(name={n!r}, dtype=Float64),\n" for n in d.names)
    return f'''"""Generated by tsops from ../tsops.yaml: do not edit. Change tsops.yaml and run
`tsops ingest` instead.

Plain Feast (no tsops import): `feast plan`, `feast apply`, `feast materialize-incremental` and
`feast serve` work here with only Feast installed, on the views tsops reads and writes.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, String
{_render_imports(d)}
series = Entity(
    name={d.entity!r},
    join_keys=[{d.entity!r}],
    value_type=ValueType.STRING,
    description={d.description!r},
)

{_render_sources(d)}
series_features = FeatureView(
    name={FEATURE_VIEW!r},
    entities=[series],
    ttl=timedelta(seconds={d.ttl_seconds!r}),
    schema=[
{fields}    ],
    online=True,
    source=series_history,
    tags={{{FEATURE_HASH_TAG!r}: {d.feature_hash!r}}},
)

series_state = FeatureView(
    name={STATE_VIEW!r},
    entities=[series],
    ttl=timedelta(0),
    schema=[Field(name={STATE_FIELD!r}, dtype=String)],
    online=True,
    source=series_state_log,
    description={STATE_DESCRIPTION!r},
)
'''


def _empty_state_query(d: FeastDefinitions) -> str:
    """The state view's offline source in PostgreSQL: no rows (state lives online only)."""
    return (
        f'SELECT NULL::text AS "{d.entity}", NULL::timestamptz AS "{d.time}", '
        f'NULL::text AS "{STATE_FIELD}" WHERE false'
    )


def _render_imports(d: FeastDefinitions) -> str:
    if d.offline != "postgres":
        return ""
    return (
        "from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (\n"
        "    PostgreSQLSource,\n)\n"
    )


def _render_sources(d: FeastDefinitions) -> str:
    if d.offline == "postgres":
        return (
            f"series_history = PostgreSQLSource(\n    name={SOURCE_NAME!r},\n    table={d.table!r},\n"
            f"    timestamp_field={d.time!r},\n)\n\n"
            "# Online only: tsops stream workers write each entity's incremental state through to it.\n"
            f"series_state_log = PostgreSQLSource(\n    name={STATE_SOURCE!r},\n"
            f"    query={_empty_state_query(d)!r},\n    timestamp_field={d.time!r},\n)\n"
        )
    return (
        f"series_history = FileSource(\n    name={SOURCE_NAME!r},\n    path={d.source_path!r},\n"
        f"    timestamp_field={d.time!r},\n)\n\n"
        "# Online only: tsops stream workers write each entity's incremental state through to it.\n"
        f"series_state_log = FileSource(\n    name={STATE_SOURCE!r},\n    path={d.state_path!r},\n"
        f"    timestamp_field={d.time!r},\n)\n"
    )


def _write_empty_state_log(d: FeastDefinitions) -> None:
    """The state view's offline source: empty (state lives online only), but it must exist
    for `feast materialize-incremental`, which reads every view's source."""
    path = Path(d.state_path)
    if d.offline != "file" or path.exists():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [(d.entity, pa.string()), (d.time, pa.timestamp("us", tz="UTC")), (STATE_FIELD, pa.string())]
    )
    tmp = path.with_suffix(f".{os.getpid()}.{time_ns()}.tmp")
    pq.write_table(schema.empty_table(), tmp)
    os.replace(tmp, path)


def write_repo(project: Project) -> Path:
    """(Re)generate `feature_repo/` from settings; the `feast` CLI works on it."""
    repo = project.feature_repo
    repo.mkdir(parents=True, exist_ok=True)
    project.state_dir.mkdir(parents=True, exist_ok=True)
    definitions = FeastDefinitions.of(project)
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(repo_config_dict(project), sort_keys=False))
    (repo / "features.py").write_text(repo_code(definitions))
    _write_empty_state_log(definitions)
    return repo


class FeatureStoreClient:
    """The project's Feast store: definitions resolved once, then reads and writes."""

    def __init__(self, project: Project):
        from feast import FeatureStore
        from feast.repo_config import RepoConfig

        logging.getLogger("feast").setLevel(logging.WARNING)
        self.project = project
        self.features = FeatureSet(project.settings.features)
        self.offline = offline_store(project)
        write_repo(project)
        config = RepoConfig(repo_path=project.feature_repo, **repo_config_dict(project, resolved=True))
        self.store = FeatureStore(config=config)
        self.entity, self.source, self.view, _, self.state_view = feast_objects(project)
        self.refs = [f"{FEATURE_VIEW}:{n}" for n in self.features.names]

    def apply(self) -> None:
        """Register the entity and feature view (idempotent), with the plausible target range
        `tsops ingest` derived from the history (stream workers read it back)."""
        series = self.project.settings.series
        if series.derived_range is None:
            self._use_registered_range()  # a re-apply (not an ingest) keeps the last ingest's
        derived = series.derived_range
        if derived is not None:
            self.view.tags[RANGE_TAG] = json.dumps(list(derived))
        try:
            self.store.apply([self.entity, self.view, self.state_view])
        except Exception as e:  # connection errors of the online store come through here
            raise StoreError(f"feast apply failed: {e}", str(self.project.feature_repo)) from e

    def ingested_hash(self) -> str | None:
        """The definition hash of the feature view `tsops ingest` last registered (None: none)."""
        from feast.errors import FeatureViewNotFoundException

        try:
            view = self.store.get_feature_view(FEATURE_VIEW)
        except FeatureViewNotFoundException:
            return None
        return view.tags.get(FEATURE_HASH_TAG)

    def require_ingested(self) -> None:
        """Refuse to read features computed under another definition: after an edit of
        `features` in tsops.yaml, the stores hold the old columns until `tsops ingest` runs."""
        registered = self.ingested_hash()
        if registered is None:
            raise StoreError("no features yet: run tsops ingest", str(self.project.feature_repo))
        if registered != self.features.definition_hash():
            raise ConfigError("features changed since the last ingest: run tsops ingest", "features")
        self._use_registered_range()

    def _use_registered_range(self) -> None:
        """The plausible range the last ingest derived, onto the settings (outlier checks)."""
        from feast.errors import FeatureViewNotFoundException

        try:
            raw = self.store.get_feature_view(FEATURE_VIEW).tags.get(RANGE_TAG)
        except FeatureViewNotFoundException:
            return
        if raw:
            low, high = json.loads(raw)
            self.project.settings.series.use_derived_range((float(low), float(high)))

    def write_offline(self, features: pd.DataFrame) -> None:
        """Replace the offline store atomically: an interrupted write leaves the old one intact."""
        self.offline.write(features)

    def append_offline(self, rows: pd.DataFrame) -> None:
        """Durably add stream observations (with their features); a replayed one lands once
        (the file store merges them on `compact_offline`, PostgreSQL on insert)."""
        self.offline.append(rows)

    def compact_offline(self) -> int:
        """Fold the stream's appended observations into what training reads; rows added."""
        return self.offline.compact()

    def read_offline(self) -> pd.DataFrame:
        """The offline store's rows (time tz-naive UTC), sorted by entity and time."""
        return self.offline.read()

    def materialize(self, start: pd.Timestamp, end: pd.Timestamp) -> None:
        from tsops.console import third_party_output

        try:
            with third_party_output():  # Feast's banner and bars, with colour codes when piped
                self.store.materialize(
                    start_date=start.tz_localize("UTC").to_pydatetime(),
                    end_date=end.tz_localize("UTC").to_pydatetime(),
                    feature_views=[FEATURE_VIEW],
                )
        except Exception as e:
            raise StoreError(f"materialize failed: {e}", str(self.project.feature_repo)) from e

    def historical(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time correct features for (entity, time) rows, in the input's row order.

        For each row, Feast joins the latest feature row at or before its time; a feature row
        is computed only from observations at or before its own time.
        """
        series = self.project.settings.series
        ent, time = series.entity_col, series.time
        query = pd.DataFrame(
            {
                ent: entity_df[ent].astype(str).to_numpy(),
                "event_timestamp": pd.to_datetime(entity_df[time]).dt.tz_localize("UTC").to_numpy(),
                "_row": range(len(entity_df)),
            }
        )
        query["event_timestamp"] = pd.to_datetime(query["event_timestamp"], utc=True)
        result = self.store.get_historical_features(entity_df=query, features=self.refs).to_df()
        result = result.sort_values("_row").set_index("_row")
        columns = {ent: entity_df[ent].to_numpy(), time: entity_df[time].to_numpy()}
        columns.update({name: result[name].to_numpy(dtype=float) for name in self.features.names})
        return pd.DataFrame(columns)  # at once: hundreds of inserted columns fragment the frame

    def online(self, entity_ids: list[str]) -> pd.DataFrame:
        """Current features of entities from the online store (NaN rows for unknown ids)."""
        ent = self.project.settings.series.entity_col
        rows = [{ent: str(e)} for e in entity_ids]
        with self._online_file_errors():
            response = self.store.get_online_features(features=self.refs, entity_rows=rows)
        return pd.DataFrame(response.to_dict())[[ent, *self.features.names]]

    @contextmanager
    def _online_file_errors(self) -> Iterator[None]:
        """A SQLite online store that is not a database (truncated, overwritten) as an error
        naming the file and how to rebuild it, not a sqlite3 traceback."""
        import sqlite3

        try:
            yield
        except sqlite3.DatabaseError as e:
            if not any(w in str(e) for w in ("not a database", "malformed", "corrupt")):
                raise  # e.g. "database is locked": not the file's fault
            path = self.project.state_dir / "online.db"
            raise CorruptFile(
                f"the SQLite online store cannot be read ({e}); move it aside and run `tsops ingest` "
                "to rebuild it (stream workers rebuild their state from it)",
                str(path),
            ) from None

    def write_online(self, rows: pd.DataFrame) -> None:
        """Write feature rows (entity, time, feature columns) to the online store.

        The rows go to the store through Feast's own provider (`online_write_batch`: the same
        tables, keys and serialized values as `FeatureStore.write_to_online_store`), with the
        protos built here from the float matrix: `write_to_online_store` converts the frame to
        Arrow and then value by value, ~60% of its time for a stream checkpoint (50 entities ×
        56 features: 38 → 29 ms, docs/performance.md), on the stream worker's interpreter lock."""
        from feast.protos.feast.types.Value_pb2 import Value

        if not len(rows):
            return
        series = self.project.settings.series
        names = self.features.names
        times = pd.DatetimeIndex(pd.to_datetime(rows[series.time])).tz_localize("UTC").to_pydatetime()
        # NaN (a lookback not yet filled) is stored as a null value, as Feast's conversion does.
        values = [
            {n: Value(double_val=v) if v == v else Value() for n, v in zip(names, row, strict=True)}
            for row in rows[names].to_numpy(dtype=float).tolist()
        ]
        self._write_protos(self.view, list(rows[series.entity_col]), list(times), values)

    def write_states(self, states: dict[str, EntityState]) -> None:
        """Write entities' incremental state through to the online store (as JSON strings)."""
        from feast.protos.feast.types.Value_pb2 import Value

        if not states:
            return
        # The write time, not the entity's last event time: state can change without a new bar
        # (open aggregation bars), and Redis ignores a write not newer than the last.
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        values = [{STATE_FIELD: Value(string_val=json.dumps(s.to_dict()))} for s in states.values()]
        self._write_protos(self.state_view, list(states), [now] * len(states), values)

    def _write_protos(
        self, view: Any, entities: list[Any], times: list[datetime], values: list[dict[str, Any]]
    ) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        key = self.project.settings.series.entity_col
        data: list[tuple[EntityKey, dict[str, Value], datetime, datetime | None]] = [
            (EntityKey(join_keys=[key], entity_values=[Value(string_val=str(e))]), protos, t, None)
            for e, t, protos in zip(entities, times, values, strict=True)
        ]
        try:
            with self._online_file_errors():
                self.store._get_provider().online_write_batch(self.store.config, view, data, progress=None)
        except (OSError, ConnectionError) as e:
            raise StoreError(f"the {self._online_name} failed: {e}", "stores.online") from None
        except Exception as e:  # redis-py's errors do not derive from OSError
            if type(e).__module__.startswith("redis"):
                raise StoreError(f"the {self._online_name} failed: {e}", "stores.online") from None
            raise

    @property
    def _online_name(self) -> str:
        online = self.project.settings.stores.online
        if online.type == "redis":
            return f"Redis online store at {online.connection_string.split(',')[0]}"
        return "SQLite online store"

    def clear_online(self, entity_ids: list[str]) -> None:
        """Blank the entities' features and stream state in the online store (Feast's SQLite
        store cannot delete a key): serving then answers 404 for them, and a stream worker that
        meets one again starts it afresh."""
        from feast.protos.feast.types.Value_pb2 import Value

        if not entity_ids:
            return
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()  # newer than the last write (Redis)
        times = [now] * len(entity_ids)
        self._write_protos(self.view, entity_ids, times, [{n: Value() for n in self.features.names}
                                                          for _ in entity_ids])  # fmt: skip
        self._write_protos(
            self.state_view, entity_ids, times, [{STATE_FIELD: Value(string_val="")} for _ in entity_ids]
        )

    def read_states(self, entity_ids: list[str]) -> dict[str, EntityState]:
        """Stored state of the entities that have one (unknown entities are left out)."""
        if not entity_ids:
            return {}
        ent = self.project.settings.series.entity_col
        with self._online_file_errors():
            response = self.store.get_online_features(
                features=[f"{STATE_VIEW}:{STATE_FIELD}"], entity_rows=[{ent: e} for e in entity_ids]
            ).to_dict()
        lookback = self.features.lookback
        return {
            str(e): EntityState.from_dict(lookback, json.loads(raw))
            for e, raw in zip(response[ent], response[STATE_FIELD], strict=True)
            if raw
        }

    def online_row_count(self, entity_ids: list[str]) -> int:
        if not entity_ids:
            return 0
        frame = self.online(entity_ids)
        return int(frame[self.features.window_names[0]].notna().sum())
