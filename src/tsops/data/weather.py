"""Real hourly 2010 temperatures (°F) for Seattle and San Francisco, shipped by `vega_datasets`."""

from __future__ import annotations

import pandas as pd
from vega_datasets import local_data

CITIES = {"seattle": local_data.seattle_temps, "san_francisco": local_data.sf_temps}


def load_weather() -> pd.DataFrame:
    """Long frame with columns city, date, temp; two entities, hourly, 2010 (local time as UTC)."""
    parts = []
    for city, loader in CITIES.items():
        frame = loader()[["date", "temp"]].copy()
        frame.insert(0, "city", city)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)
