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
