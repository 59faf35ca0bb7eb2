"""The decision log: every retrain, promotion, gate refusal and rollback, with its reason and
figures, as one tag per decision on the registered model (`tsops.decision.<UTC time>`, a JSON
object), so the MLflow UI, `tsops status` and the dashboard read the same history."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

TAG_PREFIX = "tsops.decision."
MAX_VALUE = 5000  # registered-model tag values are VARCHAR(5000) in MLflow's SQL stores

Figure = float | int | str | bool | None


@dataclass
class Decision:
    """One decision. `kind`: retrain | promote | rollback. `outcome`: promoted | rejected |
    logged (challenger kept, auto-promotion off) | failed | rolled_back | kept."""

    kind: str
    outcome: str
    reason: str
    version: int | None = None  # the version decided about (challenger, promoted, rolled back)
    champion: int | None = None  # champion after the decision
    previous: int | None = None  # champion before it
    trigger: str = "manual"  # drift | accuracy | schedule | manual | online_accuracy
    mode: str | None = None  # warm | scratch for retrains
    figures: dict[str, Figure] = field(default_factory=dict)
    run_id: str | None = None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))

    @property
    def changed_champion(self) -> bool:
        return self.outcome in ("promoted", "rolled_back")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record(client: MlflowClient, name: str, decision: Decision) -> None:
    """Append a decision to the registered model's log (creating the registered model if a
    first training failed before registering it)."""
    raw = decision.as_dict()
    value = json.dumps(raw)
    if len(value) > MAX_VALUE:
        raw["reason"] = raw["reason"][: max(200, len(raw["reason"]) - (len(value) - MAX_VALUE) - 20)] + " …"
        value = json.dumps(raw)[:MAX_VALUE]
    stamp = datetime.fromisoformat(decision.at).strftime("%Y%m%dT%H%M%S.%fZ")
    try:
        client.set_registered_model_tag(name, TAG_PREFIX + stamp, value)
    except MlflowException:
        client.create_registered_model(name)
        client.set_registered_model_tag(name, TAG_PREFIX + stamp, value)


def history(client: MlflowClient, name: str) -> list[Decision]:
    """Every recorded decision, oldest first (empty if the model is not registered)."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    out = []
    for key in sorted(k for k in tags if k.startswith(TAG_PREFIX)):
        try:
            out.append(Decision(**json.loads(tags[key])))
        except (json.JSONDecodeError, TypeError):
            continue  # a truncated or foreign tag: skip it rather than hide the rest
    return out
