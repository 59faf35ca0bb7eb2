"""The executor side of the Spark engine: per-entity state in Spark's stateful operator
(`transformWithStateInPandas`) running the shared steps of `tsops.streaming.steps`, and the
champion's forecasts (`mapInPandas`). Both emit rows of `OUTPUT_SCHEMA`, which the driver's
`foreachBatch` turns into the same writes as the python engine.

Feature store clients and the forecaster are resolved once per Python worker and cached.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql.streaming.stateful_processor import StatefulProcessor, StatefulProcessorHandle, TimerValues

from tsops.features.definitions import EntityState, FeatureSet
from tsops.settings import Project
from tsops.streaming.events import Event, EventError, EventParser, RawRecord, dead_letter
from tsops.streaming.steps import NewRows, TumblingBars, prediction_records, push_event

KEYED_SCHEMA = (
    "payload string, partition int, offset long, received double, "
    "key string, time_ns long, value double, dead string"
)
"""Raw records, validated: the grouping key (the entity) with the event's time and value, or,
for a payload that fails validation, the key `DEAD_KEY` and the dead-letter record (`dead`)."""

OUTPUT_SCHEMA = "kind string, entity string, time_ns long, values array<double>, text string, received double"
"""`kind` is one of: `row` (an offline/online feature row: values = target, *features),
`observed` (an observation applied, a bar when ticks are aggregated: values = [target]; the
actuals the monitor joins), `predict` (features of an applied event to forecast), `prediction`
(text = the record), `state` (text = the entity's state JSON), `dead` (text = the dead-letter
record) and `counts` (text = the per-key counters of the batch)."""

RAW_COLUMNS = ("payload", "partition", "offset", "received")
DEAD_KEY = ""  # payloads that fail validation (no entity is empty): all dead letters

_clients: dict[Path, Any] = {}
_forecasters: dict[tuple[Path, int], Any] = {}
_checked: set[tuple[str, str]] = set()  # (query run, entity) this worker compared with the store


def feature_client(project: Project) -> Any:
    """One `FeatureStoreClient` per project and Python worker."""
    client = _clients.get(project.root)
    if client is None:
        from tsops.features.store import FeatureStoreClient

        client = _clients[project.root] = FeatureStoreClient(project)
    return client


def forecaster(project: Project, version: int) -> Any:
    """The champion the driver resolved, loaded once per Python worker."""
    key = (project.root, version)
    model = _forecasters.get(key)
    if model is None:
        from tsops import registry

        _, model = registry.load_forecaster(project, registry.CHAMPION, version=version)
        _forecasters[key] = model
    return model


class Keyer:
    """`mapInPandas` function before the grouping: validates each payload with `events.parse`
    (the same rules as the python engine) and keys it by its entity; an invalid payload gets
    `DEAD_KEY` and its dead-letter record."""

    def __init__(self, project: Project):
        self.project = project

    def __call__(self, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        series = self.project.settings.series
        stream = self.project.settings.stream
        max_future = pd.Timedelta(stream.max_future)
        floor = stream.aggregate is None
        for frame in frames:
            parse = EventParser(
                series,
                pd.Timestamp.now("UTC").tz_localize(None) + max_future,
                floor=floor,
                max_bytes=stream.max_event_bytes,
                max_depth=stream.max_event_depth,
            )
            keys: list[str] = []
            times: list[int] = []
            values: list[float] = []
            dead: list[str | None] = []
            for payload, partition, offset, received in frame[list(RAW_COLUMNS)].itertuples(index=False):
                try:
                    ev = parse(payload)
                except EventError as e:
                    record = RawRecord(payload, int(partition), int(offset), float(received))
                    keys.append(DEAD_KEY)
                    times.append(0)
                    values.append(math.nan)
                    dead.append(json.dumps(dead_letter(e, record), default=str))
                    continue
                keys.append(ev.entity)
                times.append(ev.time.value)
                values.append(ev.value)
                dead.append(None)
            yield frame.assign(
                key=keys, time_ns=np.array(times, dtype=np.int64), value=np.array(values), dead=dead
            )


def _output(rows: list[dict[str, Any]]) -> pd.DataFrame:
    # time_ns is never null (0 where it does not apply): a nullable long would travel through
    # pandas as float64 and lose nanoseconds.
    return pd.DataFrame(
        {
            "kind": [r["kind"] for r in rows],
            "entity": [r.get("entity") for r in rows],
            "time_ns": np.array([r.get("time_ns", 0) for r in rows], dtype=np.int64),
            "values": [r.get("values") for r in rows],
            "text": [r.get("text") for r in rows],
            "received": np.array([r.get("received", math.nan) for r in rows], dtype=float),
        }
    )


def _progress(state: EntityState) -> tuple[pd.Timestamp, pd.Timestamp]:
    """How far a state has got: its last applied bar, then its latest tick in an open bar."""
    oldest = pd.Timestamp.min
    return (
        state.last_time if state.last_time is not None else oldest,
        pd.Timestamp(state.pending["max_time"]) if "max_time" in state.pending else oldest,
    )


class EntityProcessor(StatefulProcessor):
    """Per entity (the grouping key): validate its payloads, apply them in arrival order
    (partition, offset) with `push_event` (bars, gaps) and `NewRows`, exactly as the python
    processor does, and keep the `EntityState` (as JSON) in Spark's state store. An entity Spark holds no
    state for starts from the online store's state (ingested history or another engine's
    work); so does one whose stored state is newer than Spark's the first time a worker sees
    it in this run (the python engine ran in between)."""

    def __init__(self, project: Project, source_name: str):
        import uuid

        self.project = project
        self.source_name = source_name
        self.run = uuid.uuid4().hex  # Python workers outlive a query: compare once per run

    def init(self, handle: StatefulProcessorHandle) -> None:
        settings = self.project.settings
        self.series = settings.series
        self.stream = settings.stream
        self.features = FeatureSet(settings.features)
        self.bars = (
            None if self.stream.aggregate is None else TumblingBars(self.stream.aggregate, self.series)
        )
        self.value_state = handle.getValueState("entity_state", "json string")

    def _stored(self, entity: str) -> EntityState | None:
        return feature_client(self.project).read_states([entity]).get(entity)  # type: ignore[no-any-return]

    def _load(self, entity: str) -> EntityState | None:
        held = None
        if self.value_state.exists():
            raw = self.value_state.get()
            held = EntityState.from_dict(self.features.lookback, json.loads(raw[0])) if raw else None
        check = (self.run, entity)
        if held is not None and check in _checked:
            return held
        stored = self._stored(entity)
        _checked.add(check)
        if held is None or (stored is not None and _progress(stored) > _progress(held)):
            return stored
        return held

    def handleInputRows(
        self, key: Any, rows: Iterator[pd.DataFrame], timerValues: TimerValues
    ) -> Iterator[pd.DataFrame]:
        entity = str(key[0])
        frame = pd.concat(list(rows), ignore_index=True)
        # The python engine applies in arrival order: per partition, by offset.
        frame = frame.sort_values(["partition", "offset"], kind="stable")
        out: list[dict[str, Any]] = [
            {"kind": "dead", "text": text} for text in frame["dead"] if isinstance(text, str)
        ]
        counts: Counter[str] = Counter(consumed=len(frame))
        valid = frame[frame["dead"].isna()]
        if len(valid):
            parsed = [
                (
                    RawRecord(payload, int(partition), int(offset), float(received)),
                    Event(entity, pd.Timestamp(int(ns)), float(value)),
                )
                for payload, partition, offset, received, ns, value in valid[
                    [*RAW_COLUMNS, "time_ns", "value"]
                ].itertuples(index=False)
            ]
            self._apply_all(entity, parsed, out, counts)
        out.append({"kind": "counts", "entity": entity, "text": json.dumps(counts)})
        yield _output(out)

    def _apply_all(
        self,
        entity: str,
        parsed: list[tuple[RawRecord, Event]],
        out: list[dict[str, Any]],
        counts: Counter[str],
    ) -> None:
        """The python processor's loop for one entity: bars → planned points pushed to the
        state → the features of all of them at once (`NewRows`)."""
        state = self._load(entity)
        block: NewRows | None = None
        closing: list[tuple[RawRecord, Event, int]] = []  # predict from the row of its last bar
        touched = False
        for record, ev in parsed:
            try:
                if state is None:
                    if self.stream.unknown_entities == "dead_letter":
                        raise EventError(
                            "unknown_entity", f"entity {ev.entity!r} has no history", self.series.entity_col
                        )
                    state = self.features.new_state()
                if block is None:
                    block = NewRows(state)
                position = (self.source_name, record.partition, record.offset)
                bars, filled = push_event(self.series, self.stream, self.bars, state, block, ev, position)
                counts["gap_steps_filled"] += filled
            except EventError as e:
                if e.kind in ("duplicate", "late") and self.stream.duplicates == "drop":
                    counts["dropped"] += 1
                else:
                    out.append(self._dead(e, record))
                continue
            counts["applied"] += 1
            touched = True
            out.extend(
                {"kind": "observed", "entity": entity, "time_ns": b.time.value, "values": [b.value]}
                for b in bars
            )
            if bars:  # else a tick went into a bar that is still open
                counts["bars_closed"] += len(bars) if self.bars is not None else 0
                assert block is not None
                closing.append((record, bars[-1], len(block.values) - 1))
        if block is not None and block.values:
            matrix = block.features(self.features)
            for t, v, feats in zip(block.times, block.values, matrix, strict=True):
                out.append({"kind": "row", "entity": entity, "time_ns": t.value, "values": [v, *feats]})
            for record, bar, i in closing:
                if np.isfinite(matrix[i]).all():
                    out.append(
                        {
                            "kind": "predict",
                            "entity": entity,
                            "time_ns": bar.time.value,
                            "values": matrix[i].tolist(),
                            "received": record.received,
                        }
                    )
                else:
                    counts["warming_up"] += 1
        if touched and state is not None:
            text = json.dumps(state.to_dict())
            self.value_state.update((text,))
            out.append({"kind": "state", "entity": entity, "text": text})

    @staticmethod
    def _dead(error: EventError, record: RawRecord) -> dict[str, Any]:
        return {"kind": "dead", "entity": None, "text": json.dumps(dead_letter(error, record), default=str)}

    def close(self) -> None:
        pass


class Predictor:
    """`mapInPandas` function: forecasts every `predict` row of a batch in one model call and
    turns them into prediction records; other rows pass through."""

    def __init__(self, project: Project, version: int):
        self.project = project
        self.version = version

    def __call__(self, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import time

        settings = self.project.settings
        for frame in frames:
            todo = frame["kind"] == "predict"
            if not todo.any():
                yield frame
                continue
            items = frame[todo]
            model = forecaster(self.project, self.version)
            names = tuple(FeatureSet(settings.features).names)
            matrix = np.vstack(items["values"].to_numpy())
            yhat = model.predict_matrix(matrix, names)
            now = time.time()
            events = [
                Event(e, pd.Timestamp(t), math.nan)
                for e, t in zip(items["entity"], items["time_ns"], strict=True)
            ]
            records = prediction_records(
                events,
                yhat,
                series=settings.series,
                model=settings.model.name,
                version=self.version,
                latencies_ms=[(now - r) * 1000 for r in items["received"]],
                intervals=model.interval_bounds(matrix, names, yhat),
            )
            done = _output(
                [{"kind": "prediction", "entity": r["entity"], "text": json.dumps(r)} for r in records]
            )
            yield pd.concat([frame[~todo], done], ignore_index=True)
