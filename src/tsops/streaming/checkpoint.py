"""Checkpoints: the durable writes that trail the micro-batches, as Kafka Streams' and Flink's
commit intervals do. Each micro-batch writes its predictions (and dead letters) to the sinks at
once; its feature rows, entity states and source offsets are accumulated here and, every
`stream.checkpoint_interval_ms`, written in this order: offline log → online features (latest
row per entity) → states, by a background thread; then the offsets are committed by the
processing thread between two polls. The poll → predict → sink path
never waits on the feature store, yet a crash still replays from the last commit onto the state
written with it, and the replay rewrites identical rows and predictions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from tsops.features.definitions import EntityState
from tsops.features.store import FeatureStoreClient
from tsops.streaming.events import RawRecord
from tsops.streaming.sources import Source


@dataclass
class _Pending:
    frames: list[pd.DataFrame] = field(default_factory=list)
    states: dict[str, EntityState] = field(default_factory=dict)
    records: list[RawRecord] = field(default_factory=list)


class Checkpointer:
    def __init__(
        self,
        make_client: Callable[[], FeatureStoreClient],
        source: Source,
        entity_col: str,
        interval_ms: int,
    ):
        self.source = source
        self.entity_col = entity_col
        self.interval = interval_ms / 1000
        self._make_client = make_client
        self._client: FeatureStoreClient | None = None  # the writer thread's own store handle
        self._pending = _Pending()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tsops-checkpoint")
        self._inflight: tuple[Future[None], list[RawRecord]] | None = None
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self.checkpoints = 0

    def add(self, rows: pd.DataFrame, states: dict[str, EntityState], records: list[RawRecord]) -> None:
        """Take one micro-batch's feature rows, a snapshot of the states it changed, and its
        records (whose offsets the checkpoint commits)."""
        if len(rows):
            self._pending.frames.append(rows)
        self._pending.states.update({e: s.copy() for e, s in states.items()})
        self._pending.records.extend(records)

    def due(self) -> bool:
        return bool(self._pending.records) and time.monotonic() - self._last >= self.interval

    def flush(self, wait: bool = False) -> None:
        """Hand what is pending to the writer (after the previous checkpoint finished: at most
        one in flight, which also bounds memory); with `wait`, return once it is committed."""
        self._await_inflight()
        if self._pending.records:
            pending, self._pending = self._pending, _Pending()
            self._last = time.monotonic()
            self._inflight = (self._executor.submit(self._write, pending), pending.records)
        if wait or self.interval == 0:
            self._await_inflight()

    def commit_finished(self) -> None:
        """Commit the offsets of a checkpoint whose writes have finished (called between polls)."""
        if self._inflight is not None and self._inflight[0].done():
            self._await_inflight()

    def close(self) -> None:
        try:
            self.flush(wait=True)
        finally:
            self._executor.shutdown(wait=True)

    def _await_inflight(self) -> None:
        if self._inflight is not None:
            (future, records), self._inflight = self._inflight, None
            future.result()  # a failed write fails the worker; nothing after it was committed
            # Offsets are committed here, on the consumer's own thread (never from the writer:
            # a Kafka consumer must not be called from two threads, e.g. during a rebalance).
            self.source.commit(records)
            self.checkpoints += 1

    def _write(self, pending: _Pending) -> None:
        if self._client is None:
            self._client = self._make_client()
        client = self._client
        if pending.frames:
            rows = pd.concat(pending.frames, ignore_index=True)
            client.append_offline(rows)
            client.write_online(rows.groupby(self.entity_col, sort=False).tail(1))
        client.write_states(pending.states)
