"""One chunk through the model: Arrow in, accepted rows with predictions and rejected rows
with their reason out. Shared by the local and the Spark engine."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tsops.batch.model import BatchModel, Scored
from tsops.batch.sources import REJECT_COLUMN
from tsops.errors import DataError

REASON, CHUNK, ROW = "reject_reason", "chunk", "row"  # columns added to rejected rows


def rechunk(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of exactly `rows` rows (the last may be shorter), whatever sizes the
    source yields; later batches are cast to the first one's column types."""
    pending: list[pa.RecordBatch] = []
    count = 0
    schema: pa.Schema | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        batch = batch.replace_schema_metadata(None)
        if schema is None:
            schema = batch.schema
        elif not batch.schema.equals(schema):
            try:
                batch = batch.cast(schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                message = f"the source's column types changed between batches: {e}"
                raise DataError(message, "data.source") from None
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield _combine(pending)
                pending, count = [], 0
    if pending:
        yield _combine(pending)


def _combine(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(parts) == 1:
        return parts[0]
    return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


@dataclass
class ChunkResult:
    accepted: pa.RecordBatch  # the input columns of the accepted rows
    predictions: dict[str, pa.Array]  # aligned with `accepted`
    rejected: pa.RecordBatch | None  # the input rows (as read) + reason, chunk, row
    first_reject: tuple[int, int, str] | None  # (row in chunk, source row, reason)
    raw: pa.RecordBatch  # the chunk as read
    positions: np.ndarray  # where the accepted rows are in `raw`

    def accepted_raw(self) -> pa.RecordBatch:
        """The accepted rows as read (before text columns were parsed as numbers)."""
        if len(self.positions) == self.raw.num_rows:
            return self.raw
        return self.raw.take(pa.array(self.positions, type=pa.int64()))


class ChunkProcessor:
    """Signature conformance, source-flagged rejects, scoring with culprit search."""

    def __init__(self, model: BatchModel, *, first_only: bool):
        self.model = model
        self.first_only = first_only

    def process(self, batch: pa.RecordBatch, index: int, first_row: int) -> ChunkResult:
        flagged: list[str | None] | None = None
        if REJECT_COLUMN in batch.schema.names:
            column = batch.column(REJECT_COLUMN)
            flagged = column.to_pylist() if column.null_count < len(column) else None
            batch = batch.drop_columns([REJECT_COLUMN])
        conformed, unparsed = self.model.conform(batch)
        reasons: dict[int, str] = {}
        for found in (flagged, unparsed):
            for i, reason in enumerate(found or []):
                if reason is not None:
                    reasons.setdefault(i, reason)
        if reasons and self.first_only:  # the fail policy stops here: no need to score
            return self._result(batch, conformed, np.array([], dtype=np.int64), {}, reasons, index, first_row)
        candidates = np.arange(batch.num_rows, dtype=np.int64)
        if reasons:
            candidates = np.setdiff1d(candidates, np.fromiter(reasons, dtype=np.int64, count=len(reasons)))
        model_input = conformed.select(self.model.model_columns(conformed.schema.names))
        if len(candidates) < batch.num_rows:
            model_input = model_input.take(pa.array(candidates))
        scored = (
            self.model.score(model_input.to_pandas(split_blocks=True), first_only=self.first_only)
            if len(candidates)
            else Scored({}, np.zeros(0, dtype=bool))
        )
        for pos, reason in scored.reasons.items():
            reasons[int(candidates[pos])] = reason
        return self._result(
            batch, conformed, candidates[scored.accepted], scored.columns, reasons, index, first_row
        )

    def _result(
        self,
        raw: pa.RecordBatch,
        conformed: pa.RecordBatch,
        accepted: np.ndarray,
        predictions: dict[str, pa.Array],
        reasons: dict[int, str],
        index: int,
        first_row: int,
    ) -> ChunkResult:
        kept = conformed if len(accepted) == conformed.num_rows else conformed.take(pa.array(accepted))
        rejected = None
        first_reject = None
        if reasons:
            positions = sorted(reasons)
            rows = raw.take(pa.array(positions, type=pa.int64()))
            rejected = (
                rows.append_column(REASON, pa.array([reasons[p] for p in positions], pa.string()))
                .append_column(CHUNK, pa.array([index] * len(positions), pa.int64()))
                .append_column(ROW, pa.array([first_row + p for p in positions], pa.int64()))
            )
            first_reject = (positions[0], first_row + positions[0], reasons[positions[0]])
        return ChunkResult(kept, predictions, rejected, first_reject, raw, accepted)


def output_batch(result: ChunkResult, keep: list[str]) -> pa.RecordBatch:
    """The kept input columns next to the predictions."""
    names = [*keep, *result.predictions]
    arrays = [result.accepted.column(c) for c in keep] + list(result.predictions.values())
    return pa.RecordBatch.from_arrays(arrays, names=names)


def kept_columns(keep: str | list[str], names: list[str], predictions: list[str]) -> list[str]:
    """Resolve the job's `keep` against the input columns; refuse name clashes."""
    if keep == "all":
        chosen = list(names)
    elif keep == "none":
        chosen = []
    else:
        missing = [c for c in keep if c not in names]
        if missing:
            raise DataError(f"column(s) {missing} are not in the source {names[:20]}", "keep")
        chosen = list(keep)
    clash = [c for c in chosen if c in predictions]
    if clash:
        raise DataError(
            f"prediction column(s) {clash} already exist in the input; leave them out with keep: [...]",
            "keep",
        )
    return chosen
