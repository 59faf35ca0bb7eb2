"""`tsops ingest`: history → cleaned regular series → features → offline store → online store."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

from tsops.console import progress as progress_display
from tsops.data.history import CleaningSummary, clean_history, read_table
from tsops.features.definitions import EntityState
from tsops.features.engines import batch_features
from tsops.features.store import FeatureStoreClient
from tsops.settings import Project


@dataclass
class IngestResult:
    cleaning: CleaningSummary
    offline_rows: int
    online_rows: int
    entities: list[str]


def final_states(
    history: pd.DataFrame, client: FeatureStoreClient, entity: str, target: str, time: str
) -> dict[str, EntityState]:
    """Each entity's incremental state after its last observation: where a stream resumes."""
    states = {}
    for key, group in history.groupby(entity, sort=False):
        state = client.features.new_state()
        tail = group.tail(state.lookback)
        for t, v in zip(tail[time], tail[target], strict=True):
            state.push(pd.Timestamp(t), float(v))
        states[str(key)] = state
    return states


def ingest(project: Project, *, quiet: bool = False) -> IngestResult:
    series = project.settings.series
    with progress_display(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), show=not quiet
    ) as progress:
        task = progress.add_task("reading history", total=5)
        raw = read_table(project.data_path, project.settings.data.format)
        history, summary = clean_history(raw, series, str(project.data_path))
        progress.update(task, advance=1, description="computing features (batch engine)")
        client = FeatureStoreClient(project)
        features = batch_features(
            history,
            client.features,
            entity=series.entity_col,
            time=series.time,
            target=series.target,
        )
        progress.update(task, advance=1, description="writing offline store")
        client.write_offline(features)
        progress.update(task, advance=1, description="registering feature view (feast apply)")
        client.apply()
        progress.update(task, advance=1, description="materializing online store")
        times = history[series.time]
        client.materialize(times.min(), times.max() + series.step)
        states = final_states(history, client, series.entity_col, series.target, series.time)
        client.write_states(states)
        entities = sorted(history[series.entity_col].astype(str).unique())
        online = client.online_row_count(entities)
        progress.update(task, advance=1, description="ingest done")
    return IngestResult(summary, len(features), online, entities)
