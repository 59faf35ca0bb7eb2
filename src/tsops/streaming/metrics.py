"""Prometheus metrics of a stream worker, and its liveness (`/healthz`) on the same port."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from tsops.streaming import liveness


class StreamMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_in = Counter(
            "tsops_stream_events_consumed", "events polled from the source", registry=self.registry
        )
        self.events_processed = Counter(
            "tsops_stream_events_processed", "events applied to state", registry=self.registry
        )
        self.predictions = Counter(
            "tsops_stream_predictions", "prediction records written", registry=self.registry
        )
        self.dead_letters = Counter(
            "tsops_stream_dead_letters", "dead-lettered events", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "tsops_stream_processing_seconds",
            "poll → prediction written, per event",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.lag = Gauge(
            "tsops_stream_consumer_lag", "records seen but not committed", registry=self.registry
        )
        self.checkpoint = Histogram(
            "tsops_stream_checkpoint_seconds",
            "one checkpoint's store writes: offline log, online rows and states of the changed entities",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.state_size = Gauge(
            "tsops_stream_state_entities", "entities held in memory", registry=self.registry
        )
        self.registry.register(_SourceHealthCollector())

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """`/healthz` (200 live, 503 with the unreachable source) and the metrics on any other
        path, on `host`:`port`, from a daemon thread."""
        from prometheus_client import make_wsgi_app

        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/healthz":
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            live, body = liveness.report()
            start_response(
                "200 OK" if live else "503 Service Unavailable", [("Content-Type", "application/json")]
            )
            return [json.dumps(body).encode()]

        server = make_server(host, port, app, _ThreadingServer, _QuietHandler)
        threading.Thread(target=server.serve_forever, name="tsops-metrics", daemon=True).start()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """A scrape or a probe every few seconds is not worth a log line."""


class _SourceHealthCollector:
    """The registered sources' liveness, read at each scrape."""

    def collect(self) -> Iterator[Metric]:
        states = liveness.sources()
        unreachable = GaugeMetricFamily(
            "tsops_stream_source_unreachable_seconds",
            "how long the source has been unreachable (0 while it answers)",
            labels=["source"],
        )
        for h in states:
            unreachable.add_metric([h.name], h.unreachable_for())
        yield unreachable
        yield GaugeMetricFamily(
            "tsops_stream_live",
            "1 while every source answers or has been unreachable less than its limit (/healthz 200)",
            value=float(all(h.alive() for h in states)),
        )
