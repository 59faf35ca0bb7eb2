"""Typed errors. Each carries what caused it (a field, a file, a column, a row) so the CLI,
the HTTP layer and the dead-letter sink can report it in one format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_SHOWN = 100  # characters of a user-supplied value (an entity id, a field) in a message
MAX_MESSAGE = 2000  # characters of a message line: a 200 KB id must not come back whole
MAX_WHERE = 1000  # characters of `where`: a file's whole path, yet not a 200 KB field value


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def shorten(value: object, limit: int = MAX_SHOWN) -> str:
    """`value` for a message: its repr if a string (quoted), clipped to `limit` characters."""
    text = repr(value) if isinstance(value, str) else str(value)
    return clip(text, limit)


@dataclass
class TsopsError(Exception):
    """Base class: a problem the user can fix. Rendered without a traceback."""

    message: str
    where: str | None = None  # a field path, file, column or row that caused it
    details: list[str] = field(default_factory=list)

    exit_code = 2
    kind = "error"

    def __str__(self) -> str:
        where = clip(self.where, MAX_WHERE) if self.where else None
        message = self.message if len(self.message) <= MAX_MESSAGE else clip(self.message, MAX_MESSAGE)
        head = f"{where}: {message}" if where else message
        return "\n".join([head, *(f"  - {clip(d, MAX_MESSAGE)}" for d in self.details)])

    def as_dict(self) -> dict[str, Any]:
        """The one error body used by HTTP responses and dead-letter records."""
        return {"error": self.kind, "detail": str(self), "where": self.where}


class ConfigError(TsopsError):
    """tsops.yaml (or an environment override) is invalid."""

    kind = "config_error"


class DataError(TsopsError):
    """Input data is missing or malformed: names the file, column or row."""

    kind = "data_error"


class ModelError(TsopsError):
    """A model is missing from the registry or cannot be used."""

    kind = "model_error"


class StoreError(TsopsError):
    """A feature store or tracking store cannot be reached or is empty."""

    kind = "store_error"


class CorruptFile(StoreError):
    """A store's file cannot be read (truncated, half-written, not what it should be): names the
    file and what to do."""

    kind = "corrupt_file"


class NotFound(TsopsError):
    """An unknown entity, model or version (HTTP 404)."""

    kind = "not_found"
    status = 404


class DiskFull(TsopsError):
    """A write found no space left (ENOSPC, SQLite's "disk is full"): names where. Nothing
    half-written is kept: durable writes go through a temporary file or a transaction."""

    kind = "disk_full"


def disk_full(error: BaseException, path: object = None, what: str = "") -> DiskFull | None:
    """`error`, or an error it was raised from, as a `DiskFull` at `path` (else at the file the
    error names); None if no space was not the cause."""
    import errno
    import sqlite3

    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        full = (isinstance(cause, OSError) and cause.errno == errno.ENOSPC) or (
            isinstance(cause, sqlite3.Error) and "disk is full" in str(cause)
        )
        if full:
            where = path or (cause.filename if isinstance(cause, OSError) else None) or "an unnamed file"
            tail = f": {what}" if what else ": free space there and run the command again"
            return DiskFull(f"disk full at {where}{tail}", str(where))
        orig = getattr(cause, "orig", None)  # SQLAlchemy wraps the driver's error
        cause = orig if isinstance(orig, BaseException) else (cause.__cause__ or cause.__context__)
    return None


def raise_if_disk_full(error: BaseException, path: object = None, what: str = "") -> None:
    """Raise `disk_full(...)` from `error` if no space was the cause (the caller re-raises
    `error` otherwise)."""
    full = disk_full(error, path, what)
    if full is not None:
        raise full from error
