"""Open Inference Protocol v2 (KServe / Triton REST) for `/v2/models/{name}/infer`.

Inputs: one tensor of shape [rows, features] (or [features]) in signature column order, or
one tensor per feature column named like the column, shape [rows] or [rows, 1]. Tensors come
as JSON `data` or, with Triton's binary extension, as raw bytes after the JSON header
(`Inference-Header-Content-Length`). The output `yhat` has shape [rows, horizon], FP64, as
JSON or binary when the request asks for it (`binary_data_output` or per-output
`binary_data`), which is what `tritonclient.http` does by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from tsops.serving.codecs import finite_matrix
from tsops.serving.codecs.mlflow import parse_json
from tsops.serving.errors import BadRequest

OUTPUT = "yhat"
HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES: dict[str, Any] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


@dataclass
class InferRequest:
    matrix: np.ndarray
    id: str | None
    binary_output: bool
    outputs: list[str] | None = None  # the output names the request asked for (None: all)


def decode(body: bytes, header_length: str | None, columns: list[str]) -> InferRequest:
    """Parse an infer request (JSON, or JSON header + binary tensors) into the feature matrix."""
    json_part, binary = body, b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise BadRequest("must be an integer", HEADER_LENGTH) from None
        if not 0 < size <= len(body):
            raise BadRequest(f"{size} is outside the body's {len(body)} bytes", HEADER_LENGTH)
        json_part, binary = body[:size], body[size:]
    request = parse_json(json_part)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise BadRequest('expected {"inputs": [{"name", "shape", "datatype", "data"}]}', "body")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(request["inputs"]):
        where = f"inputs[{i}]"
        if not isinstance(spec, dict):
            raise BadRequest("each input must be an object", where)
        array, offset = _tensor(spec, binary, offset, where)
        tensors[str(spec.get("name"))] = array
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} binary bytes belong to no input", "body")
    matrix = _assemble(tensors, columns)
    params = request.get("parameters") or {}
    outputs = request.get("outputs") or []
    binary_output = bool(isinstance(params, dict) and params.get("binary_data_output")) or any(
        isinstance(o, dict) and (o.get("parameters") or {}).get("binary_data") for o in outputs
    )
    request_id = request.get("id")
    names = [str(o.get("name")) for o in outputs if isinstance(o, dict) and o.get("name")] or None
    return InferRequest(matrix, None if request_id is None else str(request_id), binary_output, names)


def _tensor(spec: dict[str, Any], binary: bytes, offset: int, where: str) -> tuple[Any, int]:
    shape, datatype = spec.get("shape"), spec.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest("shape must be a list of non-negative integers", f"{where}.shape")
    if datatype not in DTYPES:
        raise BadRequest(f"datatype must be one of {sorted(DTYPES)}", f"{where}.datatype")
    dtype = np.dtype(DTYPES[datatype])
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest("binary_data_size does not fit the body", f"{where}.parameters")
        raw = binary[offset : offset + size]
        if size != int(np.prod(shape)) * dtype.itemsize:
            raise BadRequest(f"{size} bytes do not hold {shape} {datatype}", where)
        return np.frombuffer(raw, dtype=dtype).reshape(shape), offset + size
    if "data" not in spec:
        raise BadRequest("has neither data nor binary_data_size", where)
    try:
        array = np.asarray(spec["data"], dtype=np.float64).reshape(shape)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"data does not fit shape {shape} ({e})", f"{where}.data") from None
    return array, offset


def _assemble(tensors: dict[str, Any], columns: list[str]) -> np.ndarray:
    if len(tensors) == 1:
        ((name, array),) = tensors.items()
        if name not in columns:
            return finite_matrix(array, len(columns), f"inputs[{name}]")
    missing = [c for c in columns if c not in tensors]
    if missing:
        raise BadRequest(
            f"send one [rows, {len(columns)}] tensor or one tensor per column; "
            f"missing column(s) {missing[:5]}",
            "inputs",
        )
    try:
        stacked = np.stack([np.asarray(tensors[c]).reshape(-1) for c in columns], axis=1)
    except ValueError:
        raise BadRequest("column tensors have different lengths", "inputs") from None
    return finite_matrix(stacked, len(columns), "inputs")


def interval_outputs(bounds: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Interval bounds as extra output tensors: `yhat_lower_80`, `yhat_upper_80`, ..."""
    out = {}
    for level, (lower, upper) in bounds.items():
        out[f"{OUTPUT}_lower_{level}"], out[f"{OUTPUT}_upper_{level}"] = lower, upper
    return out


def encode(
    yhat: np.ndarray,
    model: str,
    version: int,
    request_id: str | None,
    binary: bool,
    extra: dict[str, np.ndarray] | None = None,
    requested: list[str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The infer response body and extra headers (the binary extension's header length).
    `extra` are further output tensors (the interval bounds); `requested` names the outputs the
    request asked for, in its order (default: `yhat`, then every extra one)."""
    tensors = {OUTPUT: yhat, **(extra or {})}
    names = requested or list(tensors)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; this model has {list(tensors)}", "outputs")
    outputs, chunks = [], []
    for name in names:
        array = tensors[name]
        output: dict[str, Any] = {"name": name, "datatype": "FP64", "shape": list(array.shape)}
        if binary:
            chunk = np.ascontiguousarray(array, dtype="<f8").tobytes()
            output["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            output["data"] = np.asarray(array, float).reshape(-1).tolist()
        outputs.append(output)
    raw = b"".join(chunks)
    response: dict[str, Any] = {
        "model_name": model,
        "model_version": str(version),
        "outputs": outputs,
    }
    if request_id is not None:
        response["id"] = request_id
    header = orjson.dumps(response)
    if not binary:
        return header, {}
    return header + raw, {HEADER_LENGTH: str(len(header))}


def model_metadata(
    model: str, versions: list[int], columns: list[str], horizon: int, levels: list[str] | None = None
) -> dict:
    names = [OUTPUT, *(f"{OUTPUT}_{side}_{lv}" for lv in levels or [] for side in ("lower", "upper"))]
    return {
        "name": model,
        "versions": [str(v) for v in versions],
        "platform": "pytorch_mlflow",
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, len(columns)]}],
        "outputs": [{"name": n, "datatype": "FP64", "shape": [-1, horizon]} for n in names],
        "parameters": {"columns": columns},
    }
