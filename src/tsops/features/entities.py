"""`tsops entities drop`: take entities out of the feature stores, e.g. one a mistyped event
created in a stream (with `stream.unknown_entities: accept`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from tsops.errors import MAX_SHOWN, ConfigError, shorten
from tsops.features.store import FeatureStoreClient
from tsops.settings import Project


@dataclass
class DropResult:
    dropped: list[str]
    offline_rows: int  # rows removed from the offline store
    in_history: list[str]  # still in the project's history file: a new ingest brings them back


def close_matches(name: str, known: list[str]) -> list[str]:
    """Known entity names that look like `name` (a typo's likely intent), best first."""
    return difflib.get_close_matches(name, known, n=3, cutoff=0.6)


def unknown_entity_message(name: str, known: list[str]) -> str:
    matches = close_matches(name, known) if len(name) <= MAX_SHOWN else []
    hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    return f"no entity {shorten(name)}{hint}"


def drop_entities(project: Project, names: list[str]) -> DropResult:
    """Remove the entities' rows from the offline store (stream parts merged first) and blank
    them in the online store. Stop stream workers first: a running one keeps them in memory."""
    from tsops.data.history import read_table

    client = FeatureStoreClient(project)
    ent = project.settings.series.entity_col
    client.compact_offline()  # the stream's appended observations first: they may hold it
    frame = client.read_offline()
    known = sorted(frame[ent].astype(str).unique())
    unknown = [n for n in names if n not in set(known)]
    if unknown:
        raise ConfigError("; ".join(unknown_entity_message(n, known) for n in unknown), "entities drop")
    mask = frame[ent].astype(str).isin(names)
    client.write_offline(frame[~mask].reset_index(drop=True))
    client.clear_online(list(names))
    in_history: list[str] = []
    if project.data_path.exists():
        raw = read_table(project.data_path, project.settings.data.format)
        if project.settings.series.entity and project.settings.series.entity in raw.columns:
            present = set(raw[project.settings.series.entity].astype(str).unique())
            in_history = [n for n in names if n in present]
    return DropResult(list(names), int(mask.sum()), in_history)
