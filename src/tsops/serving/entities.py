"""Forecast by entity: the entity's current features from the online store, read in-process
through the Feast SDK (definitions resolved once at start, no extra HTTP hop), and the
forecast's target times: the feature row's event time + h × the series' frequency."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from tsops.features.store import FeatureStoreClient
from tsops.serving.errors import BadRequest, NotFound
from tsops.settings import Project

TIMESTAMP_SUFFIX = "__ts"  # Feast's key for a feature's event time in `to_dict(True)`
MAX_ENTITIES = 1000


@dataclass
class EntityRows:
    entities: list[str]
    matrix: np.ndarray  # (entities, features) in `columns` order
    origins: list[datetime]  # each entity's last feature time (UTC)


class OnlineFeatures:
    def __init__(self, project: Project):
        self.client = FeatureStoreClient(project)
        self.entity_col = project.settings.series.entity_col
        self.step = project.settings.series.step.to_pytimedelta()
        self.names = self.client.features.names
        self._store = self.client.store
        self._refs = self.client.refs

    def read(self, entities: list[str], columns: list[str]) -> EntityRows:
        """Current feature rows of `entities`; NotFound names the entities the store lacks."""
        if not entities:
            raise BadRequest("give at least one entity", "entities")
        if len(entities) > MAX_ENTITIES:
            raise BadRequest(f"at most {MAX_ENTITIES} entities per request", "entities")
        response = self._store.get_online_features(
            features=self._refs, entity_rows=[{self.entity_col: e} for e in entities]
        ).to_dict(include_event_timestamps=True)
        missing_cols = [c for c in columns if c not in response]
        if missing_cols:
            raise BadRequest(
                f"the model needs feature(s) {missing_cols[:5]} the online store does not have",
                "model",
            )
        values = [response[c] for c in columns]
        unknown = [e for i, e in enumerate(entities) if any(v[i] is None for v in values)]
        if unknown:
            raise NotFound(
                f"no current features for {len(unknown)} entit(y/ies): {unknown[:10]}", "entity"
            )
        matrix = np.array(values, dtype=np.float64).T
        stamps = response[columns[0] + TIMESTAMP_SUFFIX]
        origins = [datetime.fromtimestamp(int(s), UTC) for s in stamps]
        return EntityRows(list(entities), np.ascontiguousarray(matrix), origins)

    def times(self, origin: datetime, horizon: int) -> list[str]:
        step: timedelta = self.step
        return [
            (origin + step * h).isoformat().replace("+00:00", "Z") for h in range(1, horizon + 1)
        ]
