"""The commit pipeline: the one owner of the order in which a stream's work becomes durable,
for both engines (as quixstreams' `Checkpoint.commit`).

    at once, per micro-batch:      prediction sinks → dead letters → monitor
    every checkpoint (trailing):   offline log → online features (latest row per entity)
                                   → entity states → source offsets

The python engine hands each micro-batch to `commit` and goes on polling. With `pipelined`
(its default) the "at once" stage of a large micro-batch (`PIPELINE_FROM` predictions or more:
a worker catching up) runs on an emitter thread while the next micro-batch is parsed and
predicted: a sink's fsync or broker acknowledgement (~2-4 ms on this machine's
disk) and the monitor's accounting no longer hold up the next poll. At most one batch is
being emitted; the next `commit` waits for it (and raises its error). The checkpoint's store
writes run on a second background thread every `stream.checkpoint_interval_ms`, after the
emits of the batches they cover (a state written before its predictions are durable would
make a replay skip them), and the offsets are committed by the processing thread between two
polls (a Kafka consumer must not be called from two threads), so the poll → predict → sink
path never waits on the feature store. The
Spark engine's `foreachBatch` commits with a zero interval and no offsets: every batch is
written before it returns, and Spark then commits the batch's offsets in its own checkpoint.

A crash at any point replays from the last committed offsets onto the states written with
them: the replay rewrites identical predictions (same idempotency keys) and rows, and events
whose state was already written are duplicates that change nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
from prometheus_client import Histogram

from tsops.features.definitions import EntityState
from tsops.features.store import FeatureStoreClient
from tsops.records import Event, Prediction
from tsops.streaming.events import RawRecord
from tsops.streaming.sinks import Sink

# Batches of fewer predictions are emitted before `commit` returns, even when pipelined. At a
# steady 2,000 events/s (batches of ~20) handing them to the emitter raised the end-to-end p50
# from 5 to 8.5 ms: the next tiny batch then waited for the previous one's fsync as well as its
# own. When the worker catches up (batches of thousands) the overlap pays: 13,800 → 16,400
# events/s from a file (docs/benchmarks.md, "Issue 18").
PIPELINE_FROM = 500


class Monitor(Protocol):
    """What the pipeline needs of `tsops.monitoring.monitor.StreamMonitor`."""

    def on_batch(
        self, events: list[Event], feature_rows: pd.DataFrame, predictions: list[Prediction]
    ) -> None: ...

    def refresh(self) -> None: ...


@dataclass
class MicroBatch:
    """What one micro-batch produced, in the shape both engines give it."""

    predictions: list[Prediction]
    dead_letters: list[dict[str, Any]]
    observed: list[Event]  # the observations (bars) applied: the actuals the monitor joins
    rows: pd.DataFrame  # the feature rows (entity, time, target, features) in time order per entity
    states: dict[str, EntityState]  # the states the batch changed (snapshots are taken here)
    records: list[RawRecord] = field(default_factory=list)  # positions to commit, if the pipeline does
    on_durable: Callable[[], None] | None = None  # called once the predictions are in the sinks


@dataclass
class _Pending:
    frames: list[pd.DataFrame] = field(default_factory=list)
    states: dict[str, EntityState] = field(default_factory=dict)
    # The last record of each partition: a commit needs only the latest position (records come
    # in poll order), and keeping every record alive until the checkpoint cost the collector
    # scans of thousands of objects per batch.
    positions: dict[int, RawRecord] = field(default_factory=dict)
    batches: int = 0


class CommitPipeline:
    """`commit(batch)` for each micro-batch; `flush` when a checkpoint is due (the python
    engine asks with `due`), `commit_finished` between polls, `close` at the end.

    `commit_offsets` receives the last record of each partition in a finished checkpoint
    (None: the engine commits its own, as Spark does). `interval_ms` 0 writes every batch
    before `commit` returns; `pipelined` emits a batch of `PIPELINE_FROM` predictions or more
    (sinks → dead letters → monitor) on a thread of its own.
    """

    def __init__(
        self,
        *,
        sinks: list[Sink],
        dead_letter_sink: Sink,
        monitor: Monitor | None,
        make_client: Callable[[], FeatureStoreClient],
        entity_col: str,
        time_col: str,
        interval_ms: int,
        commit_offsets: Callable[[list[RawRecord]], None] | None = None,
        pipelined: bool = False,
        checkpoint_seconds: Histogram | None = None,
    ):
        self.sinks = sinks
        self.dead_letter_sink = dead_letter_sink
        self.monitor = monitor
        self.entity_col = entity_col
        self.time_col = time_col
        self.interval = interval_ms / 1000
        self._commit_offsets = commit_offsets
        self._checkpoint_seconds = checkpoint_seconds
        self._make_client = make_client
        self._client: FeatureStoreClient | None = None  # the writer thread's own store handle
        self._pending = _Pending()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tsops-checkpoint")
        self._inflight: tuple[Future[None], list[RawRecord]] | None = None
        self._emitter = ThreadPoolExecutor(1, thread_name_prefix="tsops-emit") if pipelined else None
        self._emitting: Future[None] | None = None  # the last batch handed to the emitter
        self._last = time.monotonic()
        self.checkpoints = 0

    # -- per micro-batch --------------------------------------------------------------------

    def commit(self, batch: MicroBatch) -> None:
        """Write the batch's predictions and dead letters (durable when this returns, or, when
        pipelined, when `batch.on_durable` is called), account it in the monitor, and add its
        rows, states and positions to the next checkpoint."""
        self._await_emit()  # at most one batch in the emitter, in order; its failure fails the worker
        if self._emitter is None or len(batch.predictions) < PIPELINE_FROM:
            self._emit(batch)
        else:
            self._emitting = self._emitter.submit(self._emit, batch)
        pending = self._pending
        if len(batch.rows):
            pending.frames.append(batch.rows)
        pending.states.update({e: s.copy() for e, s in batch.states.items()})
        pending.positions.update({r.partition: r for r in batch.records})
        pending.batches += 1
        if self.interval == 0:
            self.flush(wait=True)

    def _emit(self, batch: MicroBatch) -> None:
        for sink in self.sinks:
            sink.write(batch.predictions)
        self.dead_letter_sink.write(batch.dead_letters)
        if batch.on_durable is not None:
            batch.on_durable()
        if self.monitor is not None:
            self.monitor.on_batch(batch.observed, batch.rows, batch.predictions)

    def _await_emit(self) -> None:
        if self._emitting is not None:
            emitting, self._emitting = self._emitting, None
            emitting.result()

    def due(self) -> bool:
        return self._pending.batches > 0 and time.monotonic() - self._last >= self.interval

    def flush(self, wait: bool = False) -> None:
        """Hand what is pending to the writer (after the previous checkpoint finished: at most
        one in flight, which also bounds memory); with `wait`, return once it is committed."""
        self._await_inflight()
        if self._pending.batches:
            pending, self._pending = self._pending, _Pending()
            self._last = time.monotonic()
            # The emits of these batches first: the last one handed over, as the emitter runs in order.
            emitted = self._emitting
            positions = list(pending.positions.values())
            self._inflight = (self._executor.submit(self._write, pending, emitted), positions)
        if wait or self.interval == 0:
            self._await_inflight()

    def commit_finished(self) -> None:
        """Commit the offsets of a checkpoint whose writes have finished (called between polls)."""
        if self._inflight is not None and self._inflight[0].done():
            self._await_inflight()

    def close(self) -> None:
        """The last checkpoint, on every way out but a crash."""
        try:
            self.flush(wait=True)
            self._await_emit()
        finally:
            if self._emitter is not None:
                self._emitter.shutdown(wait=True)
            self._executor.shutdown(wait=True)

    # -- the checkpoint ---------------------------------------------------------------------

    def _await_inflight(self) -> None:
        if self._inflight is not None:
            (future, records), self._inflight = self._inflight, None
            future.result()  # a failed write fails the worker; nothing after it was committed
            if self._commit_offsets is not None and records:
                self._commit_offsets(records)
            self.checkpoints += 1

    def _write(self, pending: _Pending, emitted: Future[None] | None = None) -> None:
        """(the batches' emits) → offline log → online features (latest row per entity) → states."""
        if emitted is not None:
            emitted.result()  # a failed emit fails the checkpoint: nothing after it is written
        if self._client is None:
            self._client = self._make_client()
        client = self._client
        started = time.perf_counter()  # the store writes, not the writer's one-time client
        if pending.frames:
            rows = pd.concat(pending.frames, ignore_index=True)
            client.append_offline(rows)
            latest = (
                rows.sort_values(self.time_col, kind="stable").groupby(self.entity_col, sort=False).tail(1)
            )
            client.write_online(latest.reset_index(drop=True))
        if pending.states:
            client.write_states(pending.states)
        if self._checkpoint_seconds is not None:
            self._checkpoint_seconds.observe(time.perf_counter() - started)
