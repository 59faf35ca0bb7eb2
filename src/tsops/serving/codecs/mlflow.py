"""MLflow's scoring protocol, as `mlflow models serve` speaks it on `POST /invocations`.

Requests: JSON with exactly one of `dataframe_split`, `dataframe_records`, `instances`,
`inputs` (records, a column mapping, or rows in signature order), or CSV with a header.
Responses: ``{"predictions": [{"yhat_1": ..., ...}, ...]}`` serialised exactly as MLflow's
scoring server does (`json.dump` with default separators), so bodies compare byte for byte.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import orjson
import pandas as pd

from tsops.serving.codecs import finite_matrix
from tsops.serving.errors import BadRequest, Unprocessable, UnsupportedMediaType

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
JSON, CSV = "application/json", "text/csv"


def media_type(content_type: str | None) -> str:
    """The request's media type, refusing what MLflow refuses (unknown types, non-UTF-8)."""
    if not content_type:
        raise UnsupportedMediaType(f"set Content-Type to {JSON} or {CSV}", "Content-Type")
    mime, *params = (p.strip() for p in content_type.split(";"))
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            raise UnsupportedMediaType(f"unsupported parameter {param!r}", "Content-Type")
    mime = mime.lower()
    if mime not in (JSON, CSV):
        raise UnsupportedMediaType(f"expected {JSON} or {CSV}, got {mime!r}", "Content-Type")
    return mime


def parse_json(body: bytes, where: str = "body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"not valid JSON ({e})", where) from None


def decode(body: bytes, content_type: str | None, columns: list[str]) -> np.ndarray:
    """The request's rows as a (rows, len(columns)) float64 matrix in `columns` order."""
    if media_type(content_type) == CSV:
        return _from_csv(body, columns)
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise BadRequest(f"expected a JSON object with one of the keys {list(FORMATS)}", "body")
    keys = [k for k in FORMATS if k in payload]
    if len(keys) != 1:
        raise BadRequest(f"expected exactly one of {list(FORMATS)}, got keys {sorted(payload)[:10]}", "body")
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        return _from_split(value, columns)
    if key == "dataframe_records" and not _is_records(value):
        raise BadRequest("dataframe_records must be a list of objects", key)
    return table(value, columns, key)


def table(value: Any, columns: list[str], where: str) -> np.ndarray:
    """Records, a column mapping, or rows in column order → the feature matrix."""
    if isinstance(value, dict):
        missing = [c for c in columns if c not in value]
        if missing:
            raise BadRequest(f"missing column(s) {missing[:5]}", where)
        cols = [value[c] if isinstance(value[c], list) else [value[c]] for c in columns]
        if len({len(c) for c in cols}) > 1:
            raise BadRequest("columns have different lengths", where)
        return finite_matrix(list(zip(*cols, strict=True)), len(columns), where)
    if _is_records(value):
        rows = []
        for i, record in enumerate(value):
            try:
                rows.append([record[c] for c in columns])
            except KeyError:
                missing = [c for c in columns if c not in record]
                raise BadRequest(f"row {i} lacks column(s) {missing[:5]}", where) from None
        return finite_matrix(rows, len(columns), where)
    if isinstance(value, list):
        return finite_matrix(value, len(columns), where)
    raise BadRequest("expected records, a mapping of columns, or a list of rows", where)


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(r, dict) for r in value)


def _from_split(value: Any, columns: list[str]) -> np.ndarray:
    where = "dataframe_split"
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise BadRequest('expected {"columns": [...], "data": [[...], ...]}', where)
    data = value["data"]
    given = value.get("columns")
    if given is None:
        return finite_matrix(data, len(columns), where)
    if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
        raise BadRequest("columns must be a list of names", f"{where}.columns")
    if given == columns:
        return finite_matrix(data, len(columns), where)
    missing = [c for c in columns if c not in given]
    if missing:
        raise BadRequest(f"missing column(s) {missing[:5]}", f"{where}.columns")
    full = finite_matrix(data, len(given), where)
    index = {c: i for i, c in enumerate(given)}
    return full[:, [index[c] for c in columns]]


def _from_csv(body: bytes, columns: list[str]) -> np.ndarray:
    try:
        frame = pd.read_csv(io.BytesIO(body))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise BadRequest(f"not a CSV table with a header row ({e})", "body") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BadRequest(f"missing column(s) {missing[:5]}", "body")
    return finite_matrix(frame[columns].to_numpy(dtype=object), len(columns), "body")


def encode(yhat: np.ndarray, output_names: list[str]) -> bytes:
    """The body `mlflow models serve` returns for these predictions. A non-finite prediction
    (finite inputs far outside what the model was trained on overflow it) is a 422 naming
    the row: `json.dumps` would write a bare `NaN`, which is not JSON."""
    finite = np.isfinite(yhat).all(axis=tuple(range(1, yhat.ndim))) if yhat.ndim > 1 else np.isfinite(yhat)
    if not finite.all():
        row = int(np.argmin(finite))
        raise Unprocessable(
            f"the model's forecast for row {row} is not finite: its inputs are far outside the "
            f"values it was trained on ({int((~finite).sum())} row(s) like it)",
            f"row {row}",
        )
    records = [dict(zip(output_names, row, strict=True)) for row in yhat.tolist()]
    return json.dumps({"predictions": records}).encode()
