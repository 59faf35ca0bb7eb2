"""Protocol codecs: request bodies → a float64 feature matrix in the model's column order,
and predictions → response bodies. Handlers use them; the model only ever sees arrays."""

from __future__ import annotations

import numpy as np

from tsops.serving.errors import BadRequest


def finite_matrix(values: object, width: int, where: str) -> np.ndarray:
    """A (rows, width) float64 array with only finite values, or BadRequest naming the problem."""
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"values must be numbers in a rectangular table ({e})", where) from None
    if matrix.ndim == 1 and width > 0 and matrix.size == width:
        matrix = matrix.reshape(1, width)
    if matrix.ndim != 2 or matrix.shape[1] != width:
        raise BadRequest(f"expected rows of {width} feature values, got shape {list(matrix.shape)}", where)
    if matrix.shape[0] == 0:
        raise BadRequest("the batch is empty: send at least one row", where)
    finite = np.isfinite(matrix)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise BadRequest(f"row {row}, column {col}: value is NaN, infinite or missing", where)
    return matrix
