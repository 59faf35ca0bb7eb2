"""Prometheus metrics of one server (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tsops_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "tsops_request_seconds",
            "request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("tsops_errors", "error responses by kind", ["kind"], registry=r)
        self.batch_size = Histogram(
            "tsops_batch_rows",
            "rows per model call",
            ["version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "tsops_predictions",
            "rows predicted, by model version and role (champion, canary, shadow)",
            ["version", "role"],
            registry=r,
        )
        self.model_latency = Histogram(
            "tsops_model_seconds",
            "time from queueing rows to their answer, by version",
            ["version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_difference = Histogram(
            "tsops_shadow_abs_difference",
            "mean absolute difference between shadow (challenger) and champion forecasts",
            ["champion", "challenger"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.model_info = Gauge(
            "tsops_model_info",
            "loaded model versions (1) by role",
            ["name", "version", "role"],
            registry=r,
        )
        self.reloads = Counter(
            "tsops_model_reloads", "model swaps after an alias moved", ["role"], registry=r
        )
        self.canary_percent = Gauge(
            "tsops_canary_percent", "share of traffic routed to the challenger", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
