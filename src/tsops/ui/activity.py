"""Rates and latencies over the last seconds, as the dashboard plots them against wall time:
requests to the serving routes (from the app's own Prometheus registry), forecasts and dead
letters the stream wrote (from its file sinks), and a stream worker's own metrics (scraped).

Every figure is computed over a sliding window of `RATE_WINDOW_S` seconds from cumulative
readings, so a reading every second gives a smooth line and a first reading of a backlog (a
prediction file already holding thousands of records) is not mistaken for a burst.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from tsops.settings import KafkaSettings, Project, SinkSettings
from tsops.ui.promtext import Histogram, Reading
from tsops.ui.tails import JsonlTail, PartsTail, TopicTail

RATE_WINDOW_S = 10.0
NOT_SERVING = ("/", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")

T = TypeVar("T")


def serving_route(labels: dict[str, str]) -> bool:
    """Routes whose traffic the dashboard reports: not its own, not metrics or docs."""
    route = labels.get("route", "")
    return route not in NOT_SERVING and not route.startswith("/ui/")


def failed_serving_route(labels: dict[str, str]) -> bool:
    return serving_route(labels) and labels.get("status", "200") >= "400"


class Window(Generic[T]):
    """Timed readings of the last `seconds`; `push` returns the oldest one still in the window
    (the base to compute an increase from), or None for a first reading or after a gap."""

    def __init__(self, seconds: float = RATE_WINDOW_S):
        self.seconds = seconds
        self.items: deque[tuple[float, T]] = deque()

    def push(self, now: float, item: T) -> tuple[float, T] | None:
        if self.items and now - self.items[-1][0] > self.seconds:
            self.items.clear()  # the reader paused (nobody watched): a rate across it would mislead
        self.items.append((now, item))
        while len(self.items) > 2 and now - self.items[1][0] >= self.seconds:
            self.items.popleft()
        base = self.items[0]
        return None if base[0] == now else base


class RequestActivity:
    """Requests per second, latency quantiles and the error share of the serving routes."""

    def __init__(self, registry: Any):
        self.registry = registry
        self.window: Window[Reading] = Window()

    def sample(self, now: float) -> list[Any] | None:
        """[t ms, requests/s, p50, p95, p99 (seconds), error share] over the window."""
        reading = Reading.of(self.registry.collect())
        base = self.window.push(now, reading)
        if base is None:
            return None
        then, earlier = base
        hist = reading.histogram("tsops_request_seconds", serving_route) or Histogram()
        recent = hist.minus(earlier.histogram("tsops_request_seconds", serving_route))
        errors = (reading.total("tsops_requests_total", failed_serving_route) or 0) - (
            earlier.total("tsops_requests_total", failed_serving_route) or 0
        )
        share = max(errors, 0.0) / recent.count if recent.count > 0 else 0.0
        quantiles = [recent.quantile(q) for q in (0.5, 0.95, 0.99)]
        return [int(now * 1000), round(recent.count / (now - then), 3), *quantiles, round(share, 4)]


def dashboard_consumer(kafka: KafkaSettings) -> dict[str, Any]:
    """A consumer that reads a sink topic from its start and never commits: a group of its own
    per dashboard (no worker's offsets move, no other dashboard shares its partitions)."""
    import uuid

    from tsops.streaming.kafka import consumer_config

    return {**consumer_config(kafka), "group.id": f"tsops-dashboard-{uuid.uuid4().hex[:12]}"}


class SinkTail:
    """Tails a sink: JSONL lines or Parquet part files of a file sink, or a Kafka topic."""

    def __init__(self, project: Project, cfg: SinkSettings | None):
        self.tail: JsonlTail | PartsTail | TopicTail | None = None
        self.path: Path | None = None
        self.reason: str | None = None
        if cfg is not None and cfg.type == "kafka" and cfg.topic:
            self.tail = TopicTail(dashboard_consumer(project.settings.stream.kafka), cfg.topic)
            return
        if cfg is None or cfg.type != "file" or not cfg.path:
            kind = "no sink" if cfg is None else f"a {cfg.type} sink"
            self.reason = f"{kind}: the dashboard reads a file or kafka sink (stream.sinks)"
            return
        p = Path(cfg.path).expanduser()
        self.path = p if p.is_absolute() else project.root / p
        self.tail = PartsTail(self.path) if self.path.suffix.lower() == ".parquet" else JsonlTail(self.path)

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """(new records, whether the file was replaced)."""
        if isinstance(self.tail, JsonlTail | TopicTail):
            lines = self.tail.read()
            return lines.records, lines.reset
        if isinstance(self.tail, PartsTail):
            return [r for t in self.tail.read() for r in t.to_pylist()], False
        return [], False


@dataclass
class StreamTotals:
    predictions: int = 0
    dead_letters: int = 0


class StreamActivity:
    """Forecasts and dead letters per second and the processing latency of the forecasts
    (`latency_ms` of each record: poll → written) over the window."""

    def __init__(self) -> None:
        self.totals = StreamTotals()
        self.window: Window[StreamTotals] = Window()
        self.latencies: deque[tuple[float, list[float]]] = deque()
        self.started = False

    def add(
        self, now: float, records: list[dict[str, Any]], dead: int, lag: float | None
    ) -> list[Any] | None:
        """Account one read; returns [t ms, forecasts/s, p50 ms, p95 ms, dead letters/s, lag]."""
        self.totals = StreamTotals(self.totals.predictions + len(records), self.totals.dead_letters + dead)
        if self.started:  # the first read is the backlog already in the files: not a rate
            ms = [float(r["latency_ms"]) for r in records if isinstance(r.get("latency_ms"), int | float)]
            if ms:
                self.latencies.append((now, ms))
        self.started = True
        while self.latencies and now - self.latencies[0][0] > RATE_WINDOW_S:
            self.latencies.popleft()
        base = self.window.push(now, self.totals)
        if base is None:
            return None
        then, earlier = base
        span = now - then
        recent = [x for _, batch in self.latencies for x in batch]
        p50, p95 = np.percentile(recent, [50, 95]).tolist() if recent else (None, None)
        return [
            int(now * 1000),
            round((self.totals.predictions - earlier.predictions) / span, 3),
            p50,
            p95,
            round((self.totals.dead_letters - earlier.dead_letters) / span, 3),
            lag,
        ]


class WorkerMetrics:
    """A stream worker's Prometheus endpoint (`tsops stream --metrics-port`), scraped."""

    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s
        self.window: Window[Reading] = Window()

    def scrape(self, now: float) -> dict[str, Any]:
        import httpx

        try:
            response = httpx.get(self.url, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as e:
            return {"url": self.url, "error": f"cannot read {self.url}: {e}"}
        reading = Reading.parse(response.text)
        base = self.window.push(now, reading)
        consumed = reading.total("tsops_stream_events_consumed_total")
        rate = p95 = None
        if base is not None:
            then, earlier = base
            if consumed is not None:
                rate = round(
                    (consumed - (earlier.total("tsops_stream_events_consumed_total") or 0)) / (now - then), 3
                )
            hist = reading.histogram("tsops_stream_processing_seconds") or Histogram()
            p95 = hist.minus(earlier.histogram("tsops_stream_processing_seconds")).quantile(0.95)
        return {
            "url": self.url,
            "error": None,
            "lag": reading.total("tsops_stream_consumer_lag"),
            "consumed": consumed,
            "processed": reading.total("tsops_stream_events_processed_total"),
            "dead_letters": reading.by_label("tsops_stream_dead_letters_total", "reason"),
            "events_per_s": rate,
            "processing_p95_s": p95,
            "entities": reading.total("tsops_stream_state_entities"),
        }
