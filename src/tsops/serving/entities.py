"""Forecast by entity: the entity's current features from the online store, read in-process
through the Feast SDK (definitions resolved once at start, no extra HTTP hop), and the
forecast's target times: the feature row's event time + h × the series' frequency."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from tsops.errors import NotFound, StoreError
from tsops.features.store import FEATURE_VIEW, FeatureStoreClient
from tsops.serving.errors import BadRequest
from tsops.settings import Project

MAX_ENTITIES = 1000


@dataclass
class EntityRows:
    entities: list[str]
    matrix: np.ndarray  # (entities, features) in `columns` order
    origins: list[datetime]  # each entity's last feature time (UTC)


class OnlineFeatures:
    """Reads through the Feast provider's `online_read` for the resolved feature view: the
    same online store `get_online_features` reads, without its per-call request planning
    (0.27 ms instead of 1.2 ms per entity on SQLite here)."""

    def __init__(self, project: Project):
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self.client = FeatureStoreClient(project)
        self.entity_col = project.settings.series.entity_col
        self.step = project.settings.series.step.to_pytimedelta()
        self.names = self.client.features.names
        store = self.client.store
        self._config = store.config
        self._provider = store._get_provider()
        self._view = store.get_feature_view(FEATURE_VIEW)
        self._key = lambda entity: EntityKey(
            join_keys=[self.entity_col], entity_values=[Value(string_val=entity)]
        )

    def read(self, entities: list[str], columns: list[str]) -> EntityRows:
        """Current feature rows of `entities`; NotFound names the entities the store lacks."""
        if not entities:
            raise BadRequest("give at least one entity", "entities")
        if len(entities) > MAX_ENTITIES:
            raise BadRequest(f"at most {MAX_ENTITIES} entities per request", "entities")
        matrix, origins = self.lookup(entities, columns)
        unknown = [e for e, origin in zip(entities, origins, strict=True) if origin is None]
        if unknown:
            raise NotFound(f"no current features for {len(unknown)} entit(y/ies): {unknown[:10]}", "entity")
        return EntityRows(list(entities), matrix, [o for o in origins if o is not None])

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
        step: timedelta = self.step
        return [(origin + step * h).isoformat().replace("+00:00", "Z") for h in range(1, horizon + 1)]
