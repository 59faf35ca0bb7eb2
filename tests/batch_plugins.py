"""A user's own batch plugins, named in job files by import path (`batch_plugins:RangeSource`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


class RangeSource:
    """`rows` rows of `columns` float columns x0.. (a seeded normal draw) plus `id`,
    yielded `batch` rows at a time, optionally sleeping between batches (a slow source)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rows: int = Field(ge=1)
        columns: int = Field(10, ge=1)
        batch: int = Field(1000, ge=1)
        sleep_s: float = 0.0
        seed: int = 0

    def __init__(self, params: Params, context: Any):
        self.params = params

    def batches(self) -> Iterator[pa.RecordBatch]:
        p = self.params
        rng = np.random.default_rng(p.seed)
        for start in range(0, p.rows, p.batch):
            n = min(p.batch, p.rows - start)
            values = rng.normal(size=(n, p.columns))
            columns = {f"x{i}": values[:, i] for i in range(p.columns)}
            columns["id"] = np.arange(start, start + n)
            yield pa.RecordBatch.from_pydict(columns)
            time.sleep(p.sleep_s)


class JsonLinesTarget:
    """One JSON object per line; all or nothing like the built-in file targets."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str

    def __init__(self, params: Params, context: Any):
        self.path = context.path(params.path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.handle: Any = None

    def open(self, schema: pa.Schema) -> None:
        self.handle = self.tmp.open("w")

    def write(self, batch: pa.RecordBatch) -> None:
        for row in batch.to_pylist():
            self.handle.write(json.dumps(row) + "\n")

    def commit(self) -> None:
        self.handle.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
        Path(self.tmp).unlink(missing_ok=True)


class NotATarget:
    """Has no write/commit: refused as a target."""

    def open(self, schema: pa.Schema) -> None: ...
