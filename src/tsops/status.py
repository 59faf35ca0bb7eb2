"""`tsops status`: models, versions, aliases, metrics; feature views; online rows; the decision
log (retrains, promotions, rollbacks)."""

from __future__ import annotations

import json
from typing import Any

from tsops import registry
from tsops.errors import StoreError
from tsops.features.store import FeatureStoreClient
from tsops.lifecycle import decisions
from tsops.settings import Project

MAX_ENTITIES = 1000
_SHOWN_METRICS = ("lstm_mae", "lstm_rmse", "lstm_mase", "seasonal_naive_mae", "persistence_mae")


def collect(project: Project) -> dict[str, Any]:
    series = project.settings.series
    models = [
        {
            "name": v.name,
            "version": v.version,
            "aliases": v.aliases,
            "metrics": {k: v.metrics[k] for k in _SHOWN_METRICS if k in v.metrics},
            "created": v.created.isoformat(timespec="seconds"),
            "promotion_reason": v.tags.get("tsops.promotion_reason"),
            "left_out": json.loads(v.tags.get(registry.LEFT_OUT_TAG, "{}")),
        }
        for v in registry.versions(project)
    ]
    store = FeatureStoreClient(project)
    try:
        entities = sorted(store.read_offline()[series.entity_col].astype(str).unique())
    except StoreError:
        entities = []
    views = [
        {"name": fv.name, "features": len(fv.features), "entities": list(fv.entities)}
        for fv in store.store.list_feature_views()
    ]
    return {
        "project": project.settings.project,
        "models": models,
        "schema": {
            "entity": series.entity_col,
            "time": series.time,
            "target": series.target,
            "freq": series.freq,
        },
        "entities": entities[:MAX_ENTITIES],
        "entity_count": len(entities),
        "feature_views": views,
        "online_store": project.settings.stores.online.type,
        "online_rows": store.online_row_count(entities) if views else 0,
        "decisions": [
            d.as_dict() for d in decisions.history(registry.connect(project), project.settings.model.name)
        ],
    }
