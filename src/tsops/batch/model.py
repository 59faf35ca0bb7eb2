"""Any MLflow pyfunc model, scored chunk by chunk, with the rows it rejects named.

A chunk goes to the pyfunc in one call (MLflow enforces the signature there). If that call
fails, the chunk is bisected until the failing rows stand alone; each is rejected with its
reason: MLflow's signature enforcement on that row (`signature: ...`) or, if the row passes
it, the model's own error (`model: ...`). Cost: one call per clean chunk; about
2·k·log2(chunk) calls for a chunk with k bad rows.

A tsops forecaster calibrated with prediction intervals also gives its bounds, as columns
`yhat_lower_<level>_<step>` and `yhat_upper_<level>_<step>` after `yhat_1` .. `yhat_H`, for the
levels it was trained with (`model.interval_levels`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tsops.errors import DataError, ModelError

NUMERIC = {"double", "float", "long", "integer"}
REASON_CHARS = 500


@contextlib.contextmanager
def _mlflow_uris(tracking_uri: str | None) -> Iterator[None]:
    import mlflow

    if tracking_uri is None:
        yield
        return
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def download(uri: str, tracking_uri: str | None, into: Path) -> Path:
    """The model's files in a local folder (what Spark executors load)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    local = Path(uri)
    if local.is_dir():
        return local
    with _mlflow_uris(tracking_uri):
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
        except (MlflowException, OSError) as e:
            message = getattr(e, "message", None) or str(e)
            raise ModelError(f"cannot load the model: {message.splitlines()[0]}", uri) from None


def _message(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    first = str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__
    return first[:REASON_CHARS]


@dataclass
class Scored:
    """Predictions (as Arrow columns) for the accepted rows, in order; reasons by position."""

    columns: dict[str, pa.Array]
    accepted: np.ndarray  # bool per input row
    reasons: dict[int, str] = field(default_factory=dict)


class BatchModel:
    """A pyfunc loaded once; `score` predicts a chunk and names the rows it rejects."""

    def __init__(self, path: Path, uri: str):
        import mlflow
        from mlflow.exceptions import MlflowException

        self.uri = uri
        self.path = path
        self._downloaded: Path | None = None
        try:
            self.pyfunc = mlflow.pyfunc.load_model(str(path))
        except (MlflowException, OSError, ImportError) as e:
            raise ModelError(f"cannot load the model: {_message(e)}", uri) from None
        self.schema = self.pyfunc.metadata.get_input_schema()
        named = self.schema is not None and not self.schema.is_tensor_spec() and self.schema.has_input_names()
        self.inputs: list[str] | None = list(self.schema.input_names()) if named else None
        self.required: list[str] = list(self.schema.required_input_names()) if named else []
        columns = self.schema.inputs if named else []
        self.types: dict[str, str] = {c.name: getattr(c.type, "name", str(c.type)) for c in columns if c.name}
        self.with_intervals = _interval_hook(self.pyfunc)

    @classmethod
    def load(cls, uri: str, tracking_uri: str | None) -> BatchModel:
        """Download (registry, runs:/, remote store) once, then load from the local copy."""
        tmp = Path(tempfile.mkdtemp(prefix="tsops-batch-model-"))
        try:
            model = cls(download(uri, tracking_uri, tmp), uri)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        model._downloaded = tmp
        return model

    def close(self) -> None:
        """Remove the downloaded copy (a local model folder is left alone)."""
        if self._downloaded is not None:
            shutil.rmtree(self._downloaded, ignore_errors=True)
            self._downloaded = None

    # --- columns ---------------------------------------------------------------------------

    def check_columns(self, names: list[str]) -> None:
        """The source must have every column the signature requires (else nothing can pass)."""
        missing = [c for c in self.required if c not in names]
        if missing:
            raise DataError(
                f"the source lacks column(s) {missing[:10]} that the model's signature requires",
                "data.source",
            )

    def model_columns(self, names: list[str]) -> list[str]:
        """Which input columns the model receives: the signature's (in its order), else all."""
        if self.inputs is None:
            return names
        return [c for c in self.inputs if c in names]

    def conform(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[str | None] | None]:
        """Text columns the signature declares numeric (e.g. a CSV column with a stray word)
        are parsed; the values that do not parse become per-row rejects, not a failed chunk."""
        reasons: list[str | None] | None = None
        for name, kind in self.types.items():
            if kind not in NUMERIC or name not in batch.schema.names:
                continue
            column = batch.column(name)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            target = pa.float64() if kind in ("double", "float") else pa.int64()
            try:
                parsed = pc.cast(column, target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                text = pd.Series(column.to_pylist(), dtype=object)
                numbers = pd.to_numeric(text, errors="coerce")
                bad = (text.notna() & numbers.isna()).to_numpy()
                if kind in ("long", "integer"):
                    frac = numbers.notna() & (numbers != numbers.round())
                    bad |= frac.to_numpy()
                    numbers = numbers.where(~frac)
                parsed = pa.array(numbers.to_numpy(dtype=float), mask=numbers.isna().to_numpy())
                parsed = parsed.cast(target) if target == pa.int64() else parsed
                reasons = reasons or [None] * batch.num_rows
                for i in np.flatnonzero(bad):
                    reasons[i] = reasons[i] or f"signature: column {name}: {text[i]!r} is not a {kind}"
            batch = batch.set_column(batch.schema.get_field_index(name), name, parsed)
        return batch, reasons

    # --- scoring ---------------------------------------------------------------------------

    def predict_columns(self, frame: pd.DataFrame) -> dict[str, pa.Array]:
        """One pyfunc call; its output (DataFrame, Series, array, list, dict) as named columns."""
        result = self.pyfunc.predict(frame)  # the signature is enforced here
        if self.with_intervals is not None and isinstance(result, pd.DataFrame):
            result = self.with_intervals(frame, result)
        columns = _as_columns(result)
        for name, values in columns.items():
            if len(values) != len(frame):
                raise ModelError(f"returned {len(values)} values for {len(frame)} rows", name)
        return columns

    def score(self, frame: pd.DataFrame, *, first_only: bool = False) -> Scored:
        """Predict `frame`; on failure bisect to the failing rows. `first_only`: stop at the
        first rejected row (the fail policy needs no more)."""
        n = len(frame)
        try:
            return Scored(self.predict_columns(frame), np.ones(n, dtype=bool))
        except MemoryError:
            raise
        except Exception as e:
            if n == 1:
                return Scored({}, np.zeros(1, dtype=bool), {0: self.reason(frame, e)})
        pieces: list[dict[str, pa.Array]] = []
        accepted = np.zeros(n, dtype=bool)
        reasons: dict[int, str] = {}
        if not self._bisect(frame, 0, n // 2, pieces, accepted, reasons, first_only):
            self._bisect(frame, n // 2, n, pieces, accepted, reasons, first_only)
        columns: dict[str, pa.Array] = {}
        if pieces:
            for name in pieces[0]:
                columns[name] = pa.concat_arrays([p[name] for p in pieces])
        return Scored(columns, accepted, reasons)

    def _bisect(
        self,
        frame: pd.DataFrame,
        lo: int,
        hi: int,
        pieces: list[dict[str, pa.Array]],
        accepted: np.ndarray,
        reasons: dict[int, str],
        first_only: bool,
    ) -> bool:
        """Score rows [lo, hi); True when scoring should stop (first_only and found one)."""
        if lo >= hi:
            return False
        part = frame.iloc[lo:hi]
        try:
            pieces.append(self.predict_columns(part))
            accepted[lo:hi] = True
            return False
        except MemoryError:
            raise
        except Exception as e:
            if hi - lo == 1:
                reasons[lo] = self.reason(part, e)
                return first_only
        mid = (lo + hi) // 2
        if self._bisect(frame, lo, mid, pieces, accepted, reasons, first_only):
            return True
        return self._bisect(frame, mid, hi, pieces, accepted, reasons, first_only)

    def reason(self, row: pd.DataFrame, error: BaseException) -> str:
        """Why one row was refused: the signature if it refuses the row, else the model."""
        if self.schema is not None:
            from mlflow.models.utils import _enforce_schema

            try:
                _enforce_schema(row, self.schema)
            except Exception as e:
                return f"signature: {_message(e)}"
        return f"model: {_message(error)}"


def _interval_hook(pyfunc: Any) -> Any:
    """The tsops forecaster's `with_intervals(frame, forecast)`, or None for any other model."""
    try:
        python_model = pyfunc.unwrap_python_model()
    except Exception:  # not a python_function model (scikit-learn, ...): MLflow raises
        return None
    hook = getattr(python_model, "with_intervals", None)
    return hook if callable(hook) else None


def _as_columns(result: Any) -> dict[str, pa.Array]:
    if isinstance(result, pd.DataFrame):
        table = pa.Table.from_pandas(result, preserve_index=False)
        return {str(n): table.column(i).combine_chunks() for i, n in enumerate(table.column_names)}
    if isinstance(result, pd.Series):
        return {"prediction": pa.array(result.to_numpy())}
    if isinstance(result, dict):
        return {str(k): pa.array(np.asarray(v)) for k, v in result.items()}
    values = np.asarray(result)
    if values.ndim == 1:
        return {"prediction": pa.array(values)}
    if values.ndim == 2:
        return {f"prediction_{i}": pa.array(values[:, i]) for i in range(values.shape[1])}
    raise ModelError(f"cannot turn a {values.ndim}-dimensional prediction into columns", "prediction")
