"""Prometheus metrics of a stream worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.state_size = Gauge(
            "tsops_stream_state_entities", "entities held in memory", registry=self.registry
        )

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1", registry=self.registry)
