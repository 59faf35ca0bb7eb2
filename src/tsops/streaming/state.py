"""Keyed state: each entity's incremental feature state, in memory in the worker that owns
the entity's partition, loaded from the online store on first sight and written back to it
by each checkpoint (`commit.py`)."""

from __future__ import annotations

from tsops.features.definitions import EntityState
from tsops.features.store import FeatureStoreClient


class KeyedState:
    def __init__(self, client: FeatureStoreClient):
        self.client = client
        self.states: dict[str, EntityState] = {}
        self.partition_of: dict[str, int] = {}
        self.known: set[str] = set()  # entities the store had state for when first seen

    def load(self, entities: set[str]) -> None:
        """Fetch stored state for entities not in memory (one online-store read)."""
        missing = [e for e in entities if e not in self.states]
        if not missing:
            return
        loaded = self.client.read_states(missing)
        self.states.update(loaded)
        self.known.update(loaded)

    def get(self, entity: str) -> EntityState | None:
        return self.states.get(entity)

    def create(self, entity: str) -> EntityState:
        state = self.client.features.new_state()
        self.states[entity] = state
        return state

    def owned_by(self, entity: str, partition: int) -> None:
        self.partition_of[entity] = partition

    def drop_partitions(self, partitions: list[int]) -> int:
        """Forget entities of revoked partitions: their new owner loads them from the store."""
        lost = set(partitions)
        gone = [e for e, p in self.partition_of.items() if p in lost]
        for e in gone:
            self.states.pop(e, None)
            self.partition_of.pop(e, None)
        return len(gone)
