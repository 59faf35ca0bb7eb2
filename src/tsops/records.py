"""Shared record types, a layer below every package that passes them: the observation event
(streaming parses it, monitoring joins it with forecasts)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Event:
    """One observation of one entity: what a stream applies and the monitor scores."""

    entity: str
    time: pd.Timestamp  # tz-naive UTC, floored to the series' interval
    value: float


# A payload whose bytes are not UTF-8 travels as text (through Spark's Arrow batches too) behind
# this mark, its bad bytes written \xNN: no valid JSON starts with NUL, so the event parser
# dead-letters it as `invalid_utf8` instead of accepting U+FFFD-mangled names.
INVALID_UTF8 = "\x00invalid-utf8\x00"


def payload_text(raw: bytes) -> str:
    """A record's bytes as text: UTF-8, or the bytes marked `INVALID_UTF8` if they are not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_UTF8 + raw.decode("utf-8", errors="backslashreplace")
