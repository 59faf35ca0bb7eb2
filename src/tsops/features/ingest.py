"""`tsops ingest`: history → cleaned regular series → features → offline store → online store."""

from __future__ import annotations

from dataclasses import dataclass

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tsops.data.history import CleaningSummary, clean_history, read_table
from tsops.features.engines import batch_features
from tsops.features.store import FeatureStoreClient
from tsops.settings import Project


@dataclass
class IngestResult:
    cleaning: CleaningSummary
    offline_rows: int
    online_rows: int
    entities: list[str]


def ingest(project: Project, *, quiet: bool = False) -> IngestResult:
    series = project.settings.series
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        disable=quiet,
        transient=False,
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
        entities = sorted(history[series.entity_col].astype(str).unique())
        online = client.online_row_count(entities)
        progress.update(task, advance=1, description="ingest done")
    return IngestResult(summary, len(features), online, entities)
