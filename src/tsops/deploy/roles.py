"""The tsops roles as Kubernetes workloads: the namespace and configuration, the MLflow tracking
server, `tsops serve`, the stream workers, the ingest Job and the retrain CronJob."""

from __future__ import annotations

import json

import pandas as pd

from tsops.deploy.manifests import UID, Manifests, Obj, asset
from tsops.settings import ScheduleTriggerSettings


def namespace(m: Manifests) -> list[Obj]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": m.ns, "labels": m.labels("namespace")},
        }
    ]


def config(m: Manifests) -> list[Obj]:
    grafana = asset("grafana-dashboard.json")
    json.loads(grafana)  # a broken asset fails the render, not the cluster
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": m.meta("tsops-config", "config"),
            "data": {"tsops.yaml": m.config_text},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": m.meta("tsops-grafana-dashboard", "monitoring")
            | {"labels": {**m.labels("monitoring"), "grafana_dashboard": "1"}},
            "data": {"tsops.json": grafana},
        },
    ]


def serve(m: Manifests) -> list[Obj]:
    port = m.s.serving.port
    probe = {
        "httpGet": {"path": "/v2/health/ready", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    live = {
        "httpGet": {"path": "/v2/health/live", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 3,
    }
    startup = {
        "httpGet": {"path": "/v2/health/live", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 60,
    }
    container = m.container(
        "serve",
        ["serve", "--host", "0.0.0.0", "--port", str(port)],
        m.resources("500m", "1Gi", "2", "2Gi"),
        ports=[{"name": "http", "containerPort": port, "protocol": "TCP"}],
        readinessProbe=probe,
        livenessProbe=live,
        startupProbe=startup,
    )
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": m.meta("tsops-serve", "serve"),
            "spec": {
                "replicas": m.d.serve_replicas,
                "selector": {"matchLabels": m.selector("serve")},
                "template": m.pod([container], "serve"),
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": m.meta("tsops-serve", "serve"),
            "spec": {
                "selector": m.selector("serve"),
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": m.meta("tsops-serve", "serve"),
            "spec": {
                "selector": {"matchLabels": m.selector("serve")},
                "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            },
        },
    ]


def stream(m: Manifests) -> list[Obj]:
    kafka = m.s.stream.kafka
    container = m.container(
        "stream",
        ["stream", "--source", "kafka", "--metrics-port", "9108", "--metrics-host", "0.0.0.0"],
        m.resources("500m", "1Gi", "2", "2Gi"),
        ports=[{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}],
        livenessProbe={  # 503 once the broker has been unreachable stream.kafka.unreachable_after_s
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 6,
            "initialDelaySeconds": 60,
        },
    )
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": m.meta("tsops-stream", "stream"),
            "spec": {
                "replicas": m.d.stream_replicas,
                "selector": {"matchLabels": m.selector("stream")},
                "template": m.pod([container], "stream"),
            },
        },
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": m.meta("tsops-stream", "stream"),
            "spec": {
                "scaleTargetRef": {"name": "tsops-stream"},
                "minReplicaCount": 1,
                "maxReplicaCount": m.d.partitions,  # a worker per partition at most
                "triggers": [
                    {
                        "type": "kafka",
                        "metadata": {
                            "bootstrapServers": kafka.bootstrap_servers,
                            "consumerGroup": kafka.group_id,
                            "topic": kafka.events_topic,
                            "lagThreshold": "1000",
                            "allowIdleConsumers": "false",
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": m.meta("tsops-stream", "stream"),
            "spec": {
                "selector": {"matchLabels": m.selector("stream")},
                "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
            },
        },
    ]


def jobs(m: Manifests) -> list[Obj]:
    small = m.resources("500m", "1Gi", "2", "4Gi")
    ingest = m.container("ingest", ["ingest"], small)
    retrain = m.container("retrain", ["retrain", "--json"], small)
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": m.meta("tsops-ingest", "ingest"),
            "spec": {"backoffLimit": 2, "template": m.pod([ingest], "ingest", "OnFailure")},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": m.meta("tsops-retrain", "retrain"),
            "spec": {
                "schedule": retrain_schedule(m),
                "concurrencyPolicy": "Forbid",
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 1,  # exit 0 = decided: never retried
                        "template": m.pod([retrain], "retrain", "Never"),
                    }
                },
            },
        },
    ]


def retrain_schedule(m: Manifests) -> str:
    if m.d.retrain_schedule:
        return m.d.retrain_schedule
    for t in m.s.retrain.triggers:
        if isinstance(t, ScheduleTriggerSettings):
            hours = max(1, round(pd.Timedelta(t.interval).total_seconds() / 3600))
            return (
                "0 * * * *"
                if hours == 1
                else (f"0 */{hours} * * *" if hours < 24 else f"0 0 */{max(1, hours // 24)} * *")
            )
    return "0 0 * * *"


def mlflow(m: Manifests) -> list[Obj]:
    password = f"$({m.pg_password_var})" if m.pg_password_var else ""
    backend = f"postgresql://{m.pg_user}:{password}@{m.pg_host}:{m.pg_port}/{m.d.mlflow_database}"
    container = {
        "name": "mlflow",
        "image": m.image,
        "command": ["mlflow"],
        "args": [
            "server",
            "--backend-store-uri",
            backend,
            "--serve-artifacts",
            "--artifacts-destination",
            "/mlartifacts",
            "--host",
            "0.0.0.0",
            "--port",
            str(m.mlflow_port),
            "--allowed-hosts",
            f"{m.mlflow_host},{m.mlflow_host}.{m.ns},{m.mlflow_host}.{m.ns}.svc,localhost",
        ],
        "env": [e for e in m.env() if e["name"] != "TSOPS_PROJECT_DIR"],
        "ports": [{"name": "http", "containerPort": m.mlflow_port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
            "initialDelaySeconds": 30,
        },
        "volumeMounts": [{"name": "artifacts", "mountPath": "/mlartifacts"}],
        "resources": m.resources("250m", "512Mi", "1", "1Gi"),
        "securityContext": m.security(),
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": m.meta("mlflow-artifacts", "mlflow"),
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": m.meta(m.mlflow_host, "mlflow"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": m.selector("mlflow")},
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {"labels": m.labels("mlflow")},
                    "spec": {
                        "containers": [container],
                        "securityContext": {"runAsNonRoot": True, "fsGroup": UID},
                        "volumes": [
                            {
                                "name": "artifacts",
                                "persistentVolumeClaim": {"claimName": "mlflow-artifacts"},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": m.meta(m.mlflow_host, "mlflow"),
            "spec": {
                "selector": m.selector("mlflow"),
                "ports": [{"name": "http", "port": m.mlflow_port, "targetPort": "http", "protocol": "TCP"}],
            },
        },
    ]
