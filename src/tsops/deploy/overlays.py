"""The overlays: `dev` (in-cluster PostgreSQL and Redis named as the settings' hosts, one replica,
small resources, one Kafka node) and `prod` (replicas, limits, PodDisruptionBudgets,
anti-affinity, an autoscaler for serve)."""

from __future__ import annotations

import yaml
from sqlalchemy.engine import make_url

from tsops.deploy.manifests import Manifests, Obj


def dev_services(m: Manifests) -> list[Obj]:
    """In-cluster PostgreSQL and Redis for dev, named as the settings' hosts."""
    pg_env: list[Obj] = [
        {"name": "POSTGRES_USER", "value": m.pg_user},
        {"name": "POSTGRES_DB", "value": m.d.mlflow_database},
        {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
    ]
    if m.pg_password_var:
        pg_env.append(
            {
                "name": "POSTGRES_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": m.d.secret, "key": m.pg_password_var}},
            }
        )
    databases = sorted({m.d.mlflow_database, *_databases(m)})
    init = "\n".join(f"CREATE DATABASE {db};" for db in databases if db != m.d.mlflow_database)
    postgres = {
        "name": "postgres",
        "image": "postgres:16-bookworm",
        "env": pg_env,
        "ports": [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}],
        "readinessProbe": {"exec": {"command": ["pg_isready", "-U", m.pg_user]}, "periodSeconds": 5},
        "livenessProbe": {"exec": {"command": ["pg_isready", "-U", m.pg_user]}, "periodSeconds": 10},
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True},
        ],
        "resources": m.resources("100m", "256Mi", "1", "1Gi"),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 999,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    redis = {
        "name": "redis",
        "image": "redis:7-bookworm",
        "args": ["--save", "", "--appendonly", "no"],
        "ports": [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
        "resources": m.resources("100m", "128Mi", "500m", "512Mi"),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 999,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }

    def service(name: str, component: str, port: int, target: str) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": m.meta(name, component),
            "spec": {
                "selector": m.selector(component),
                "ports": [{"name": target, "port": port, "targetPort": target, "protocol": "TCP"}],
            },
        }

    def deployment(name: str, component: str, container: Obj, volumes: list[Obj]) -> Obj:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": m.meta(name, component),
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": m.selector(component)},
                "template": {
                    "metadata": {"labels": m.labels(component)},
                    "spec": {
                        "containers": [container],
                        "volumes": volumes,
                        "securityContext": {"runAsNonRoot": True, "fsGroup": 999},
                    },
                },
            },
        }

    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": m.meta("postgres-init", "postgres"),
            "data": {"databases.sql": init + "\n"},
        },
        deployment(
            m.pg_host,
            "postgres",
            postgres,
            [{"name": "data", "emptyDir": {}}, {"name": "init", "configMap": {"name": "postgres-init"}}],
        ),
        service(m.pg_host, "postgres", m.pg_port, "postgres"),
        deployment(m.redis_host, "redis", redis, []),
        service(m.redis_host, "redis", m.redis_port, "redis"),
    ]


def _databases(m: Manifests) -> list[str]:
    urls = [
        m.s.stores.offline.url,
        m.s.stores.registry_url,
        m.s.monitoring.database,
        m.s.tune.storage,
    ]
    out = []
    for url in urls:
        if url and url.startswith("postgres"):
            parsed = make_url(url.replace("${", "{").replace("}", ""))
            if parsed.database:
                out.append(parsed.database)
    return out


def prod_objects(m: Manifests) -> list[Obj]:
    return [
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": m.meta("tsops-serve", "serve"),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": m.selector("serve")}},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": m.meta("tsops-stream", "stream"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": m.selector("stream")}},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": m.meta("tsops-serve", "serve"),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tsops-serve"},
                "minReplicas": m.d.serve_replicas,
                "maxReplicas": m.d.serve_max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
    ]


def anti_affinity(m: Manifests, component: str) -> Obj:
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": m.selector(component)},
                    },
                }
            ]
        }
    }


def _patch(kind: str, name: str, ops: list[Obj], group: str = "apps", version: str = "v1") -> Obj:
    return {
        "target": {"group": group, "version": version, "kind": kind, "name": name},
        "patch": yaml.safe_dump(ops),
    }


def dev_kustomization(m: Manifests) -> Obj:
    small = m.resources("100m", "512Mi", "1", "1Gi")
    patches = [
        _patch(
            "Deployment",
            name,
            [
                {"op": "replace", "path": "/spec/replicas", "value": 1},
                {"op": "replace", "path": "/spec/template/spec/containers/0/resources", "value": small},
            ],
        )
        for name in ("tsops-serve", "tsops-stream")
    ]
    patches.append(
        _patch(
            "KafkaNodePool",
            "dual-role",
            [{"op": "replace", "path": "/spec/replicas", "value": 1}],
            group="kafka.strimzi.io",
            version="v1",
        )
    )
    patches.append(
        _patch(
            "Kafka",
            m.kafka_cluster,
            [
                {
                    "op": "replace",
                    "path": "/spec/kafka/config",
                    "value": {
                        "offsets.topic.replication.factor": 1,
                        "transaction.state.log.replication.factor": 1,
                        "transaction.state.log.min.isr": 1,
                        "default.replication.factor": 1,
                        "min.insync.replicas": 1,
                    },
                }
            ],
            group="kafka.strimzi.io",
            version="v1",
        )
    )
    patches.append(
        _patch(
            "KafkaTopic",
            ".*",
            [{"op": "replace", "path": "/spec/replicas", "value": 1}],
            group="kafka.strimzi.io",
            version="v1",
        )
    )
    patches.append(
        _patch(
            "ScaledObject",
            "tsops-stream",
            [{"op": "replace", "path": "/spec/maxReplicaCount", "value": 1}],
            group="keda.sh",
            version="v1alpha1",
        )
    )
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../base", "services.yaml"],
        "patches": patches,
        "labels": [{"pairs": {"app.kubernetes.io/instance": "dev"}, "includeSelectors": False}],
    }


def prod_kustomization(m: Manifests) -> Obj:
    patches = []
    for name, component, replicas in (
        ("tsops-serve", "serve", m.d.serve_replicas),
        ("tsops-stream", "stream", m.d.stream_replicas),
    ):
        patches.append(
            _patch(
                "Deployment",
                name,
                [
                    {"op": "replace", "path": "/spec/replicas", "value": replicas},
                    {
                        "op": "replace",
                        "path": "/spec/template/spec/containers/0/resources",
                        "value": m.resources("1", "2Gi", "2", "4Gi"),
                    },
                    {
                        "op": "add",
                        "path": "/spec/template/spec/affinity",
                        "value": anti_affinity(m, component),
                    },
                ],
            )
        )
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../base", "policies.yaml"],
        "patches": patches,
        "labels": [{"pairs": {"app.kubernetes.io/instance": "prod"}, "includeSelectors": False}],
    }
