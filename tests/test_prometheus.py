"""deploy/: a real Prometheus (Debian package) scrapes the serving app and evaluates the alert
rules; the rules and the Grafana dashboard query only metrics tsops exports, in valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from servers import PrometheusServer, ServerStartError
from serving_server import AppServer

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
GRAFANA = REPO / "deploy" / "grafana" / "tsops.json"
METRIC = re.compile(r"(?<![:\w])tsops_[a-z0-9_]+")


@pytest.fixture(scope="module")
def serving(stream_model) -> Iterator[AppServer]:  # type: ignore[no-untyped-def]
    """The serving app (what `tsops serve` runs) for the synthetic project's champion."""
    from tsops.serving.app import create_app

    server = AppServer(create_app(stream_model, watch=False)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(serving: AppServer) -> Iterator[PrometheusServer]:
    """Prometheus scraping the serving app every second (job `tsops-serve`) with deploy's rules."""
    server = PrometheusServer({"tsops-serve": [f"127.0.0.1:{serving.port}"]}, [RULES])
    try:
        server.start()
    except ServerStartError as e:
        pytest.fail(f"prometheus could not start:\n{e}", pytrace=False)
    yield server
    server.stop()


def wait_for(what: str, probe: Callable[[], Any], server: PrometheusServer, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}\n--- prometheus log ---\n{server.log()}")


def value(server: PrometheusServer, promql: str) -> float | None:
    result = server.query(promql)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_serve_and_the_error_rate_alert_fires(serving, prometheus) -> None:  # type: ignore[no-untyped-def]
    bad = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    with serving.client() as client:
        # one request of each kind first, so both series exist before the counted burst
        assert client.get("/forecast/e000").status_code == 200
        assert client.post("/invocations", **bad).status_code == 400
        wait_for(
            "a scrape of the first requests",
            lambda: value(prometheus, 'sum(tsops_requests_total{job="tsops-serve", status="400"})') == 1,
            prometheus,
        )
        for _ in range(3):
            assert client.get("/forecast/e001").status_code == 200
        for _ in range(20):
            assert client.post("/invocations", **bad).status_code == 400
    wait_for(
        "the burst in Prometheus",
        lambda: value(prometheus, 'sum(tsops_requests_total{job="tsops-serve", status="400"})') == 21,
        prometheus,
    )
    ratio = wait_for(
        "the recording rule tsops:request_errors:ratio_rate5m",
        lambda: value(prometheus, 'tsops:request_errors:ratio_rate5m{job="tsops-serve"}'),
        prometheus,
    )
    assert ratio == pytest.approx(20 / 23, rel=0.05)

    def error_alert() -> dict[str, Any] | None:
        alerts = prometheus.api("alerts")["alerts"]
        return next((a for a in alerts if a["labels"]["alertname"] == "TsopsHighErrorRate"), None)

    alert = wait_for("TsopsHighErrorRate to be pending", error_alert, prometheus)
    assert alert["state"] in ("pending", "firing")  # `for: 10m` keeps it pending in a test
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["job"] == "tsops-serve"
    firing = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert "TsopsNoChampionLoaded" not in firing and "TsopsServerErrors" not in firing


def test_every_grafana_query_is_valid_promql(prometheus) -> None:  # type: ignore[no-untyped-def]
    exprs = grafana_exprs()
    assert len(exprs) >= 30
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "1m")
        prometheus.query(concrete)  # raises with Prometheus' parse error


def test_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is not installed: run make setup"
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_and_dashboard_query_only_metrics_tsops_exports() -> None:
    exported = exported_metrics()
    rules = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for source, exprs in (("rules.yml", rules), ("tsops.json", grafana_exprs())):
        used = {m for e in exprs for m in METRIC.findall(e)}
        assert used, source
        assert used <= exported, f"{source} queries metrics nobody exports: {sorted(used - exported)}"
    alerts = {r.get("alert") for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {"TsopsDrift", "TsopsAccuracyDegraded", "TsopsStreamLag", "TsopsHighErrorRate"} <= alerts


def grafana_exprs() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def exported_metrics() -> set[str]:
    """Sample names the serving app, the stream worker and its monitor expose."""
    from tsops.monitoring.metrics import MonitorMetrics
    from tsops.serving.metrics import ServingMetrics
    from tsops.streaming.metrics import StreamMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for registry in (ServingMetrics().registry, StreamMetrics().registry, MonitorMetrics().registry):
        for family in registry.collect():
            names |= {family.name + s for s in suffixes[family.type]}
    return names
