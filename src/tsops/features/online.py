"""Entities' current features from the online store, read in-process through the Feast SDK
(definitions resolved once at start, no extra HTTP hop), and the target times of a forecast
made from them: what `/forecast` (serving) and the `entities` batch source read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from tsops.errors import MAX_SHOWN, NotFound, StoreError, shorten
from tsops.features.entities import close_matches
from tsops.features.store import FEATURE_VIEW, FeatureStoreClient
from tsops.records import iso_seconds, target_times
from tsops.settings import Project

KNOWN_TTL_S = 60.0  # how long the entity names behind 404 suggestions are reused


@dataclass
class EntityRows:
    entities: list[str]
    matrix: np.ndarray  # (entities, features) in `columns` order
    origins: list[datetime]  # each entity's last feature time (UTC)
    unknown: list[str] = field(default_factory=list)  # asked for, without current features


class OnlineFeatures:
    """Reads through the Feast provider's `online_read` for the resolved feature view: the
    same online store `get_online_features` reads, without its per-call request planning
    (0.27 ms instead of 1.2 ms per entity on SQLite here)."""

    def __init__(self, project: Project):
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self.client = FeatureStoreClient(project)
        self.entity_col = project.settings.series.entity_col
        self.step_ns = int(project.settings.series.step.value)
        self.names = self.client.features.names
        store = self.client.store
        self._config = store.config
        self._provider = store._get_provider()
        self._view = store.get_feature_view(FEATURE_VIEW)
        self._key = lambda entity: EntityKey(
            join_keys=[self.entity_col], entity_values=[Value(string_val=entity)]
        )
        self._known: tuple[float, list[str]] | None = None

    def read(self, entities: list[str], columns: list[str]) -> EntityRows:
        """Current feature rows of the `entities` the store has, and the names of those it lacks
        (`unknown`); NotFound, with close matches, only when it has none of them."""
        matrix, origins = self.lookup(entities, columns)
        found = [i for i, origin in enumerate(origins) if origin is not None]
        unknown = [e for e, origin in zip(entities, origins, strict=True) if origin is None]
        if not found:
            if len(unknown) == 1:
                raise NotFound(self.unknown_detail(unknown[0]), "entity")
            raise NotFound(
                f"no current features for any of {len(unknown)} entities: "
                f"[{', '.join(shorten(e) for e in unknown[:10])}]",
                "entity",
            )
        return EntityRows(
            [entities[i] for i in found],
            matrix[found],
            [o for o in origins if o is not None],
            unknown,
        )

    def unknown_detail(self, entity: str) -> str:
        """Why an entity has no forecast, with the known names it looks like (a typo's intent)."""
        matches = close_matches(entity, self.known_entities()) if len(entity) <= MAX_SHOWN else []
        hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
        return f"no current features for entity {shorten(entity)}{hint}"

    def known_entities(self) -> list[str]:
        """The offline store's entity names, read on a miss only and reused for a minute (the
        online store cannot list its keys); empty when the offline store cannot be read."""
        now = time.monotonic()
        if self._known is None or now - self._known[0] > KNOWN_TTL_S:
            try:
                import pyarrow.parquet as pq

                table = pq.read_table(self.client.project.offline_path, columns=[self.entity_col])
                names = sorted({str(v) for v in table.column(0).to_pylist()})
            except (OSError, KeyError, ValueError):
                names = []
            self._known = (now, names)
        return self._known[1]

    def lookup(self, entities: list[str], columns: list[str]) -> tuple[np.ndarray, list[datetime | None]]:
        """(matrix, origins) for any number of entities: an entity the store lacks, or holds an
        incomplete row for (e.g. too little history yet), has origin None and a NaN row."""
        try:
            found = self._provider.online_read(
                config=self._config,
                table=self._view,
                entity_keys=[self._key(e) for e in entities],
                requested_features=list(columns),  # Feast's Redis store appends to it
            )
        except Exception as e:  # the online store is down or unreachable
            raise StoreError(f"online store read failed: {e}", "online") from e
        matrix = np.full((len(entities), len(columns)), np.nan, dtype=np.float64)
        origins: list[datetime | None] = []
        for i, (stamp, values) in enumerate(found):
            if stamp is None or not values or any(c not in values for c in columns):
                origins.append(None)
                continue
            matrix[i] = [values[c].double_val if values[c].HasField("double_val") else np.nan
                         for c in columns]  # fmt: skip
            if not np.isfinite(matrix[i]).all():
                origins.append(None)
                continue
            origins.append(stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC))
        return matrix, origins

    def times(self, origin: datetime, horizon: int) -> list[str]:
        """The target times of a forecast made at `origin`, as ISO strings in UTC ("…Z")."""
        naive = origin.astimezone(UTC).replace(tzinfo=None) if origin.tzinfo else origin
        return [t + "Z" for t in iso_seconds(target_times([naive], self.step_ns, horizon)[0])]
