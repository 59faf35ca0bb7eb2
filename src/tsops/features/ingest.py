"""`tsops ingest`: history → cleaned regular series → features → offline store → online store.

A re-ingest merges: observations the stream appended to the offline store since (or any the
file does not have) are kept, so no entity's state moves backwards; `data.conflicts` says
whose value wins where the file and the store disagree. `replace=True` (`--replace`) rebuilds
from the file alone and reports what it dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

from tsops.console import progress as progress_display
from tsops.data.history import CleaningSummary, clean_history, read_table
from tsops.errors import CorruptFile, DataError, StoreError
from tsops.features.definitions import EntityState
from tsops.features.engines import batch_features
from tsops.features.store import FeatureStoreClient
from tsops.settings import Project, SeriesSettings


@dataclass
class MergeSummary:
    kept: int = 0  # observations only in the store (the stream's), kept
    conflicts: int = 0  # observations in both with different values
    winner: str = "file"  # whose value the conflicts took
    dropped: int = 0  # --replace: observations only in the store, dropped
    dropped_entities: list[str] = field(default_factory=list)  # --replace: entities losing rows


@dataclass
class IngestResult:
    cleaning: CleaningSummary
    offline_rows: int
    online_rows: int
    entities: list[str]
    merge: MergeSummary = field(default_factory=MergeSummary)


def refuse_outliers(history: pd.DataFrame, series: SeriesSettings, source: str) -> None:
    """A target outside the plausible range (`schema.valid_min`/`valid_max`, else derived from
    the history's spread) is a typo or a sensor fault, not an observation: refused by name."""
    bounds = series.plausible_range
    if bounds is None:
        return
    values = history[series.target].to_numpy(float)
    outside = (values < bounds[0]) | (values > bounds[1])
    if not outside.any():
        return
    first = history[outside].iloc[0]
    raise DataError(
        f"{int(outside.sum())} outlier(s) outside the plausible range [{bounds[0]:.6g}, {bounds[1]:.6g}], "
        f"e.g. {first[series.target]!r} for entity {first[series.entity_col]!r} at {first[series.time]}; "
        "fix the rows, or widen schema.valid_min/valid_max (or schema.outlier_spread)",
        f"{source}, column '{series.target}'",
    )


def stored_observations(client: FeatureStoreClient) -> pd.DataFrame | None:
    """(entity, time, target) of the offline store, the stream's appended parts included;
    None when nothing was ingested yet (or the store predates the current schema columns)."""
    series = client.project.settings.series
    columns = [series.entity_col, series.time, series.target]
    try:
        client.compact_offline()
        stored = client.read_offline()
    except StoreError as e:
        if "empty" in e.message:
            return None
        raise
    if any(c not in stored.columns for c in columns):
        return None
    return stored[columns]


def merge_observations(
    history: pd.DataFrame, stored: pd.DataFrame, *, entity: str, time: str, target: str, winner: str
) -> tuple[pd.DataFrame, MergeSummary]:
    """The file's observations plus the store's the file does not have, keyed on (entity, time);
    where both have one with different values, `winner` ("file" or "store") gives it."""
    key = [entity, time]
    stored = stored.assign(**{entity: stored[entity].astype(str)})
    joined = history.merge(stored, on=key, how="outer", suffixes=("", "_store"), indicator=True)
    theirs = joined[f"{target}_store"].to_numpy(float)
    ours = joined[target].to_numpy(float)
    only_store = (joined["_merge"] == "right_only").to_numpy()
    both = (joined["_merge"] == "both").to_numpy()
    differ = both & ~np.isclose(ours, theirs, rtol=1e-9, atol=0.0, equal_nan=True)
    take_store = only_store | (differ if winner == "store" else False)
    joined[target] = np.where(take_store, theirs, ours)
    merged = joined[[entity, time, target]].sort_values(key, kind="stable").reset_index(drop=True)
    return merged, MergeSummary(kept=int(only_store.sum()), conflicts=int(differ.sum()), winner=winner)


def dropped_by_replace(
    history: pd.DataFrame, stored: pd.DataFrame, *, entity: str, time: str
) -> MergeSummary:
    """What `--replace` drops: the store's observations the file does not have."""
    key = [entity, time]
    stored = stored.assign(**{entity: stored[entity].astype(str)})
    only = stored.merge(history[key], on=key, how="left", indicator=True)
    only = only[only["_merge"] == "left_only"]
    return MergeSummary(dropped=len(only), dropped_entities=sorted(only[entity].unique()))


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


def ingest(project: Project, *, quiet: bool = False, replace: bool = False) -> IngestResult:
    """Load the history file into the stores, merged with what the offline store already holds
    (the stream's observations) unless `replace`."""
    series = project.settings.series
    ent, time, target = series.entity_col, series.time, series.target
    with progress_display(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), show=not quiet
    ) as progress:
        task = progress.add_task("reading history", total=5)
        raw = read_table(project.data_path, project.settings.data.format)
        history, summary = clean_history(raw, series, str(project.data_path))
        client = FeatureStoreClient(project)
        series.use_derived_range(series.derive_range(history[target].to_numpy(float)))
        refuse_outliers(history, series, str(project.data_path))
        try:
            stored = stored_observations(client)
        except CorruptFile:
            if not replace:
                raise  # it names the file and says: --replace
            stored = None  # rebuilt from the file: what the unreadable store held is gone anyway
        merge = MergeSummary(winner=project.settings.data.conflicts)
        if stored is not None and replace:
            merge = dropped_by_replace(history, stored, entity=ent, time=time)
        elif stored is not None:
            winner = project.settings.data.conflicts
            history, merge = merge_observations(
                history, stored, entity=ent, time=time, target=target, winner=winner
            )
            if merge.kept:  # the stream's observations may leave holes next to the file's: fill them
                history, _ = clean_history(history, series, "the offline store")
        progress.update(task, advance=1, description="computing features (batch engine)")
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
        gone = sorted(set(merge.dropped_entities) - set(entities))
        client.clear_online(gone)  # --replace: entities only the stream had keep no features, no state
        online = client.online_row_count(entities)
        progress.update(task, advance=1, description="ingest done")
    return IngestResult(summary, len(features), online, entities, merge)
