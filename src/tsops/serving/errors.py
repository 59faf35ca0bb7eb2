"""Request errors of the HTTP layer. Each is a `TsopsError` (one body format,
``{"error", "detail", "where"}``) with the HTTP status it maps to."""

from __future__ import annotations

from tsops.errors import ConfigError, DataError, ModelError, StoreError, TsopsError


class BadRequest(DataError):
    """The request body or parameters cannot be used: names the field, column or row."""

    kind = "bad_request"
    status = 400


class Unprocessable(DataError):
    """Valid input the model cannot score (its output is not finite): names the row."""

    kind = "unprocessable"
    status = 422


class Unauthorized(TsopsError):
    kind = "unauthorized"
    status = 401


class Forbidden(TsopsError):
    kind = "forbidden"
    status = 403


class Conflict(TsopsError):
    """The request is valid but the server's state does not allow it (e.g. no challenger)."""

    kind = "conflict"
    status = 409


class PayloadTooLarge(TsopsError):
    kind = "payload_too_large"
    status = 413


class UnsupportedMediaType(TsopsError):
    kind = "unsupported_media_type"
    status = 415


class NotReady(TsopsError):
    kind = "not_ready"
    status = 503


def status_for(error: TsopsError) -> int:
    """The HTTP status of any typed error: request problems are 4xx, store outages 503."""
    explicit = getattr(error, "status", None)
    if isinstance(explicit, int):
        return explicit
    if isinstance(error, StoreError):
        return 503
    if isinstance(error, DataError | ModelError | ConfigError):
        return 400  # the model refusing an input (missing column, non-finite value)
    return 400
