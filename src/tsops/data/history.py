"""Reading a history file and turning it into regular per-entity series, per the settings' policy
for the gaps and duplicate timestamps that real data has."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tsops.errors import DataError
from tsops.settings import SINGLE_SERIES_VALUE, SeriesSettings


@dataclass
class CleaningSummary:
    rows_read: int = 0
    entities: int = 0
    duplicates: int = 0  # rows sharing an (entity, time) with another row
    realigned: int = 0  # timestamps moved onto the frequency grid
    gaps: int = 0  # missing grid points filled per the policy
    missing_values: int = 0  # empty targets filled per the policy
    rows_out: int = 0
    by_entity: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "by_entity"}


def read_table(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """Read CSV or Parquet, naming the file in any error."""
    if not path.exists():
        raise DataError("data file not found", str(path))
    kind = fmt or ("parquet" if path.suffix.lower() in {".parquet", ".pq"} else "csv")
    try:
        return pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path)
    except Exception as e:  # the readers raise many types; the user needs the file and reason
        raise DataError(f"cannot read as {kind}: {e}", str(path)) from None


REGULAR_SHARE = 0.9  # share of steps that must be whole multiples of the most common one


def infer_freq(frame: pd.DataFrame, time: str, entity: str | None) -> str:
    """The most common step between consecutive timestamps, as a pandas frequency string.
    Gaps (a step that is a whole multiple of it) are fine; irregular timestamps and calendar
    months (28 to 31 days) are refused with the reason."""
    steps = _steps(frame, time, entity)
    if steps.empty:
        raise DataError("cannot infer a frequency: fewer than two distinct timestamps", time)
    step = steps.mode().iloc[0]
    regular = float(((steps % step) == pd.Timedelta(0)).mean())
    if pd.Timedelta("28D") <= step <= pd.Timedelta("31D"):
        raise DataError(
            f"the timestamps are about a month apart (most often {step}): tsops needs a fixed step "
            "(minutes, hours, days or weeks), and calendar months are not one",
            time,
        )
    if regular < REGULAR_SHARE:
        raise DataError(
            f"cannot infer a frequency: the timestamps are irregular (only {regular:.0%} of the steps "
            f"are whole multiples of the most common one, {step}); resample the data to a regular "
            "interval, or give --freq to align it onto one",
            time,
        )
    return pd.tseries.frequencies.to_offset(step).freqstr


def _steps(frame: pd.DataFrame, time: str, entity: str | None) -> pd.Series:
    times = pd.to_datetime(frame[time])
    steps = (
        frame.assign(_t=times).sort_values([entity, "_t"]).groupby(entity)["_t"].diff()
        if entity
        else times.sort_values().diff()
    )
    return steps[steps > pd.Timedelta(0)]


def series_extent(
    frame: pd.DataFrame, time: str, entity: str | None, step: pd.Timedelta
) -> tuple[int, pd.Timedelta]:
    """Steps on the regular grid of the shortest entity, and the calendar span it covers."""
    times = pd.to_datetime(frame[time])
    grouped = times.groupby(frame[entity]) if entity else times.groupby(pd.Series(0, index=frame.index))
    spans = grouped.max() - grouped.min()
    shortest = spans.min()
    return int(shortest // step) + 1, shortest


def _parse_times(raw: pd.Series, source: str, column: str) -> pd.Series:
    times = pd.to_datetime(raw, errors="coerce", utc=True)
    bad = times.isna() & raw.notna()
    if bad.any() or raw.isna().any():
        row = int((bad | raw.isna()).to_numpy().argmax())
        raise DataError(
            f"row {row + 1}: {raw.iloc[row]!r} is not a timestamp", f"{source}, column '{column}'"
        )
    return times.dt.tz_localize(None)


def clean_history(
    frame: pd.DataFrame, series: SeriesSettings, source: str = "history"
) -> tuple[pd.DataFrame, CleaningSummary]:
    """Validate columns and types, then produce one regular series per entity.

    Output columns: entity, time (tz-naive UTC), target (float64), sorted by entity then time.
    """
    entity, time, target = series.entity_col, series.time, series.target
    needed = [c for c in (series.entity, time, target) if c]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; the file has {list(frame.columns)}", source)
    summary = CleaningSummary(rows_read=len(frame))
    out = pd.DataFrame(
        {
            entity: frame[series.entity].astype(str) if series.entity else SINGLE_SERIES_VALUE,
            time: _parse_times(frame[time], source, time),
        }
    )
    values = pd.to_numeric(frame[target], errors="coerce")
    non_numeric = values.isna() & frame[target].notna()
    if non_numeric.any():
        row = int(non_numeric.to_numpy().argmax())
        raise DataError(
            f"row {row + 1}: target {frame[target].iloc[row]!r} is not a number",
            f"{source}, column '{target}'",
        )
    out[target] = values.astype(float)

    step = series.step
    aligned = out[time].dt.floor(step)
    summary.realigned = int((aligned != out[time]).sum())
    out[time] = aligned

    dup_mask = out.duplicated([entity, time], keep=False)
    summary.duplicates = int(out.duplicated([entity, time]).sum())
    if summary.duplicates and series.duplicates == "refuse":
        first = out[dup_mask].iloc[0]
        raise DataError(
            f"{summary.duplicates} duplicate timestamp(s), e.g. {first[entity]} at {first[time]} "
            "(schema.duplicates is 'refuse')",
            source,
        )
    out = out.sort_values([entity, time], kind="stable")
    if series.duplicates == "mean":
        out = out.groupby([entity, time], as_index=False, sort=False)[target].mean()
    else:
        out = out.drop_duplicates([entity, time], keep=series.duplicates)  # type: ignore[arg-type]

    parts = []
    for key, group in out.groupby(entity, sort=True):
        grid = pd.date_range(group[time].iloc[0], group[time].iloc[-1], freq=step)
        regular = group.set_index(time)[target].reindex(grid)
        holes = regular.isna()
        n_gaps = int(holes.sum())
        summary.gaps += n_gaps - int(group[target].isna().sum())
        summary.missing_values += int(group[target].isna().sum())
        if n_gaps and series.gaps == "refuse":
            raise DataError(
                f"entity {key!r}: {n_gaps} missing step(s), first at {regular.index[holes][0]} "
                "(schema.gaps is 'refuse')",
                source,
            )
        regular = (
            regular.interpolate(limit_direction="both")
            if series.gaps == "interpolate"
            else regular.ffill().bfill()
        )
        if regular.isna().all():
            raise DataError(f"entity {key!r} has no numeric target values", source)
        parts.append(pd.DataFrame({entity: key, time: grid, target: regular.to_numpy()}))
        summary.by_entity[str(key)] = len(grid)
    result = pd.concat(parts, ignore_index=True)
    summary.entities = len(parts)
    summary.rows_out = len(result)
    return result, summary
