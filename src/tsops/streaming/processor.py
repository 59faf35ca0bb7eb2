"""The python engine's stream processor: poll → validate → (bars) → state and features →
predict (one model call per poll) → the commit pipeline (`commit.py`: sinks, dead letters and
the monitor at once; offline log, online store, states and offsets every checkpoint).

`build_processor` (in `runner.py`) wires it: the processor only turns polled records into a
`MicroBatch`."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from tsops.features.definitions import EntityState, FeatureSet
from tsops.models.lstm import Forecaster
from tsops.records import Event, Prediction
from tsops.settings import SeriesSettings, StreamSettings
from tsops.streaming.commit import CommitPipeline, MicroBatch
from tsops.streaming.events import EventError, EventParser, RawRecord, dead_letter
from tsops.streaming.metrics import StreamMetrics
from tsops.streaming.reload import ChampionWatcher
from tsops.streaming.sources import Source
from tsops.streaming.state import KeyedState
from tsops.streaming.steps import NewRows, TumblingBars, features_of, prediction_records, push_event


@dataclass
class Summary:
    consumed: int = 0
    processed: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    predictions: int = 0
    warming_up: int = 0
    gap_steps_filled: int = 0
    bars_closed: int = 0
    batches: int = 0
    reloads: int = 0  # champion versions swapped in while running
    seconds: float = 0.0  # from the first poll to the last checkpoint
    waited: float = 0.0  # of which before the first record (connecting, a group join, an idle source)
    started_over: str | None = None  # why a file source replayed from its start, if it did

    def rate(self) -> float:
        """Events consumed per second of processing: from the first record on (a Kafka group
        join of ~1 s before it is startup, not throughput; `waited` says how long it took)."""
        busy = self.seconds - self.waited
        return self.consumed / busy if busy > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "processed": self.processed,
            "dead_letters": dict(self.dead_letters),
            "dropped": self.dropped,
            "predictions": self.predictions,
            "warming_up": self.warming_up,
            "gap_steps_filled": self.gap_steps_filled,
            "bars_closed": self.bars_closed,
            "reloads": self.reloads,
            "seconds": round(self.seconds, 3),
            "waited_for_first_record": round(self.waited, 3),
            "events_per_second": round(self.rate(), 1),
            "batches": self.batches,
            **({"started_over": self.started_over} if self.started_over else {}),
        }


class Processor:
    """Turns polled records into micro-batches for the commit pipeline. Built by
    `runner.build_processor`, which wires the source, sinks, state, monitor and pipeline."""

    def __init__(
        self,
        *,
        series: SeriesSettings,
        stream: StreamSettings,
        features: FeatureSet,
        source: Source,
        state: KeyedState,
        pipeline: CommitPipeline,
        watcher: ChampionWatcher,
        forecaster: Forecaster,
        model_name: str,
        model_version: int,
        metrics: StreamMetrics,
    ):
        self.settings = stream
        self.series = series
        self.source = source
        self.state = state
        self.pipeline = pipeline
        self.watcher = watcher
        self.features = features
        self.forecaster = forecaster
        self.model_name = model_name
        self.model_version = model_version
        self.metrics = metrics
        self.summary = Summary(started_over=getattr(source, "started_over", None))
        self.max_future = pd.Timedelta(stream.max_future)
        aggregate = stream.aggregate
        self.bars = None if aggregate is None else TumblingBars(aggregate, series)
        self._received: list[float] = []  # when the predicted events were polled
        self._names = tuple(features.names)
        self._columns = [series.entity_col, series.time, series.target, *features.names]

    def on_revoke(self, partitions: list[int]) -> None:
        """Called by a Kafka source in a rebalance: checkpoint, then forget the entities of the
        revoked partitions (their new owner loads them from the store)."""
        self.pipeline.flush(wait=True)
        self.state.drop_partitions(partitions)

    def run(
        self,
        stop: threading.Event | None = None,
        max_events: int | None = None,
        until_idle: float | None = None,
    ) -> Summary:
        """Process until the source ends, `stop` is set, `max_events` were consumed, or (with
        `until_idle`) no record arrived for that many seconds."""
        stop = stop or threading.Event()
        timeout = self.settings.poll_timeout_ms / 1000
        last_record = started = time.monotonic()
        torch.set_num_threads(self.settings.model_threads)
        self.watcher.start()
        try:
            while not stop.is_set() and not self.source.exhausted:
                if max_events is not None and self.summary.consumed >= max_events:
                    break
                self.pipeline.commit_finished()
                records = self.source.poll(  # never more than --max-events leaves
                    self.settings.batch_size
                    if max_events is None
                    else min(self.settings.batch_size, max_events - self.summary.consumed),
                    timeout,
                )
                if records:
                    if not self.summary.consumed:
                        self.summary.waited = time.monotonic() - started
                    self.handle(records)
                    last_record = time.monotonic()
                else:
                    if self.pipeline.due():
                        self.pipeline.flush()
                    if self.pipeline.monitor is not None:
                        self.pipeline.monitor.refresh()
                    if until_idle is not None and time.monotonic() - last_record > until_idle:
                        break
                lag = self.source.lag()
                if lag is not None:
                    self.metrics.lag.set(lag)
        finally:
            self.watcher.stop()
            self.pipeline.close()  # the last checkpoint, on every way out but a crash
            self.summary.seconds = time.monotonic() - started
        return self.summary

    # -- one micro-batch ------------------------------------------------------------------

    def handle(self, records: list[RawRecord]) -> None:
        offer = self.watcher.take()
        if offer is not None:  # a promotion: this micro-batch on is predicted by the new champion
            self.model_version, self.forecaster = offer
            self.summary.reloads += 1
            torch.set_num_threads(self.settings.model_threads)  # loading a pyfunc resets it
        parse = EventParser(
            self.series,
            pd.Timestamp.now("UTC").tz_localize(None) + self.max_future,
            floor=self.bars is None,
            max_bytes=self.settings.max_event_bytes,
            max_depth=self.settings.max_event_depth,
        )
        dead: list[dict[str, Any]] = []
        parsed: list[tuple[RawRecord, Event]] = []
        for r in records:
            try:
                event = parse(r.payload)
                parsed.append((r, event))
            except EventError as e:
                dead.append(dead_letter(e, r))
        self.state.load({ev.entity for _, ev in parsed})

        blocks: dict[str, NewRows] = {}
        observed: list[Event] = []  # the observations (bars) applied: the actuals for monitoring
        # Events that closed at least one bar: predict from the entity's row of the last one.
        closing: list[tuple[RawRecord, Event, NewRows, int]] = []
        touched: set[str] = set()  # entities whose state changed (open bars included)
        applied = 0
        for r, ev in parsed:
            try:
                state = self._state_for(ev, r.partition)
                block = blocks.get(ev.entity)
                if block is None:
                    block = blocks[ev.entity] = NewRows(state)
                position = (self.source.name, r.partition, r.offset)
                bars, filled = push_event(self.series, self.settings, self.bars, state, block, ev, position)
                self.summary.gap_steps_filled += filled
            except EventError as e:
                if e.kind in ("duplicate", "late") and self.settings.duplicates == "drop":
                    self.summary.dropped += 1
                else:
                    dead.append(dead_letter(e, r))
                continue
            applied += 1
            touched.add(ev.entity)
            observed.extend(bars)
            if bars:  # else a tick went into a bar that is still open
                self.summary.bars_closed += len(bars) if self.bars is not None else 0
                closing.append((r, bars[-1], block, len(block.values) - 1))

        blocks = {e: b for e, b in blocks.items() if b.values}
        new = list(blocks.values())
        matrices = {id(b): m for b, m in zip(new, features_of(self.features, new), strict=True)}
        offline = self._frame(blocks, matrices)
        to_predict = [(r, ev, matrices[id(b)][i]) for r, ev, b, i in closing]
        predictions = self._predict(to_predict)
        states = {e: self.state.states[e] for e in touched}
        received, self._received = self._received, []
        durable = partial(self._observe_latency, received) if received else None
        self.pipeline.commit(MicroBatch(predictions, dead, observed, offline, states, records, durable))
        if self.pipeline.due():
            self.pipeline.flush()

        s, m = self.summary, self.metrics
        s.consumed += len(records)
        s.processed += applied
        s.predictions += len(predictions)
        s.batches += 1
        for d in dead:
            s.dead_letters[d["error"]] += 1
            m.dead_letters.labels(d["error"]).inc()
        m.events_in.inc(len(records))
        m.events_processed.inc(applied)
        m.predictions.inc(len(predictions))
        m.state_size.set(len(self.state.states))

    def _observe_latency(self, received: list[float]) -> None:
        """The batch's predictions are durable now: its events' processing latency."""
        done = time.perf_counter()
        for at in received:
            self.metrics.latency.observe(done - at)

    def _state_for(self, ev: Event, partition: int) -> EntityState:
        state = self.state.get(ev.entity)
        if state is None:
            if self.settings.unknown_entities == "dead_letter":
                raise EventError(
                    "unknown_entity", f"entity {ev.entity!r} has no history", self.series.entity_col
                )
            state = self.state.create(ev.entity)
        self.state.owned_by(ev.entity, partition)
        return state

    def _frame(self, blocks: dict[str, NewRows], matrices: dict[int, np.ndarray]) -> pd.DataFrame:
        """The micro-batch's feature rows in the offline/online column order."""
        if not blocks:
            return pd.DataFrame(columns=self._columns)
        series = self.series
        frame = pd.DataFrame(
            np.concatenate([matrices[id(b)] for b in blocks.values()]), columns=self.features.names
        )
        frame.insert(0, series.target, np.concatenate([b.values for b in blocks.values()]))
        frame.insert(0, series.time, pd.DatetimeIndex([t for b in blocks.values() for t in b.times]))
        frame.insert(0, series.entity_col, [e for e, b in blocks.items() for _ in b.values])
        return frame

    def _predict(self, items: list[tuple[RawRecord, Event, np.ndarray]]) -> list[Prediction]:
        """One model call for the micro-batch; events whose features are still warming up (NaN
        lags or rolling windows of a new entity) are counted, not predicted."""
        if not items:
            return []
        features = np.stack([x for _, _, x in items])
        ready = np.isfinite(features).all(axis=1)
        self.summary.warming_up += int((~ready).sum())
        kept = [item for item, ok in zip(items, ready, strict=True) if ok]
        if not kept:
            return []
        matrix = features[ready]
        yhat = self.forecaster.predict_matrix(matrix, self._names)
        now = time.perf_counter()
        records = prediction_records(
            [ev for _, ev, _ in kept],
            yhat,
            series=self.series,
            model=self.model_name,
            version=self.model_version,
            latencies_ms=[(now - r.received) * 1000 for r, _, _ in kept],
            intervals=self.forecaster.interval_bounds(matrix, self._names, yhat),
        )
        self._received = [r.received for r, _, _ in kept]
        return records
