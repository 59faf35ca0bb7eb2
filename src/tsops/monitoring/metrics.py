"""Prometheus metrics of the monitor (registered on the caller's registry, or an own one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.mae = Gauge(
            "tsops_online_mae",
            "rolling MAE of forecasts against actuals, by model version and horizon step ('all': mean)",
            ["model_version", "step"],
            registry=r,
        )
        self.mae_samples = Gauge(
            "tsops_online_mae_samples",
            "errors in the rolling MAE window ('all': fewest of any step)",
            ["model_version", "step"],
            registry=r,
        )
        self.coverage = Gauge(
            "tsops_online_coverage",
            "rolling share of actuals inside the forecasts' interval, by model version, interval "
            "level (percent) and horizon step ('all': mean over steps)",
            ["model_version", "level", "step"],
            registry=r,
        )
        self.coverage_samples = Gauge(
            "tsops_online_coverage_samples",
            "actuals with a bound in the rolling coverage window ('all': fewest of any step)",
            ["model_version", "level", "step"],
            registry=r,
        )
        self.actuals = Counter("tsops_accuracy_actuals", "observations seen as actuals", registry=r)
        self.joined = Counter(
            "tsops_accuracy_joined", "forecast steps joined with their actual", ["model_version"], registry=r
        )
        self.unmatched = Counter(
            "tsops_accuracy_unmatched_actuals",
            "actuals that joined no forecast, by reason",
            ["reason"],
            registry=r,
        )
        self.expired = Counter(
            "tsops_accuracy_expired_forecast_steps", "forecast steps dropped without an actual", registry=r
        )
        self.invalid = Counter(
            "tsops_accuracy_invalid_forecasts", "prediction records that could not be read", registry=r
        )
        self.pending = Gauge("tsops_accuracy_pending_forecasts", "forecasts awaiting actuals", registry=r)
        self.drift = Gauge(
            "tsops_drift_score",
            "PSI of the recent window against the training reference",
            ["feature"],
            registry=r,
        )
        self.drift_max = Gauge(
            "tsops_drift_score_max", "largest drift score of any monitored column", registry=r
        )
        self.drift_rows = Gauge("tsops_drift_window_rows", "observations in the drift window", registry=r)
        self.drift_reference = Gauge(
            "tsops_drift_reference_version",
            "model version whose training reference drift is scored against",
            registry=r,
        )
