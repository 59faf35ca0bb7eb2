"""Typed errors. Each carries what caused it (a field, a file, a column, a row) so the CLI,
the HTTP layer and the dead-letter sink can report it in one format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_SHOWN = 100  # characters of a user-supplied value (an entity id, a field) in a message
MAX_MESSAGE = 2000  # characters of a message line: a 200 KB id must not come back whole


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
        where = clip(self.where, MAX_SHOWN) if self.where else None
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
