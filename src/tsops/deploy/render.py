"""`tsops deploy render`: the kustomize tree of a project's cluster settings.

`base/` holds every role and the operators' resources (KServe, Strimzi, KEDA, spark-operator,
Prometheus Operator); `overlays/dev` adds in-cluster PostgreSQL and Redis with one replica
each and small resources; `overlays/prod` sets replicas, limits, PodDisruptionBudgets,
anti-affinity and an autoscaler. Names and ports come from the settings (the tracking URI's
host is the MLflow Service, Redis' and PostgreSQL's hosts are the dev overlay's Services, the
bootstrap host names the Strimzi cluster), so the tree and `tsops.yaml` agree by construction.
Secrets are referenced by name (`deploy.secret`, one key per `${NAME}` in the settings), never
filled in."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from sqlalchemy.engine import make_url

from tsops.deploy.checks import check_deployable
from tsops.errors import ConfigError
from tsops.secrets import PLACEHOLDER
from tsops.settings import Project

Obj = dict[str, Any]
WORK = "/work"  # each pod's project folder: an emptyDir holding the mounted tsops.yaml
UID = 10001  # the image's non-root user
STRIMZI_BOOTSTRAP = "-kafka-bootstrap"


@dataclass
class Rendered:
    root: Path
    files: list[Path] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # keys the Secret must hold


def _dump(objects: list[Obj]) -> str:
    return "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objects)


def _asset(name: str) -> str:
    return resources.files("tsops.deploy").joinpath("assets", name).read_text()


class Manifests:
    """The objects of one project's tree."""

    def __init__(self, project: Project, image: str | None):
        self.project = project
        self.s = project.settings
        self.d = self.s.deploy
        self.image = image or self.d.image
        self.spark_image = self.d.spark_image or f"{self.image}-spark"
        self.ns = self.d.namespace
        self.config_text = (project.root / "tsops.yaml").read_text()
        self.secrets = sorted(set(PLACEHOLDER.findall(self.config_text)))
        tracking = urlsplit(project.tracking_uri)
        self.mlflow_host, self.mlflow_port = tracking.hostname or "mlflow", tracking.port or 5000
        host = self.s.stream.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]
        if not host.endswith(STRIMZI_BOOTSTRAP):
            raise ConfigError(
                "these settings cannot run on a cluster (1 problem(s)); see docs/kubernetes.md",
                str(project.root / "tsops.yaml"),
                [
                    f"stream.kafka.bootstrap_servers: {host} is not a Strimzi bootstrap Service: "
                    f"name it <cluster>{STRIMZI_BOOTSTRAP}:9092 (e.g. tsops{STRIMZI_BOOTSTRAP}:9092)"
                ],
            )
        self.kafka_cluster = host[: -len(STRIMZI_BOOTSTRAP)]
        offline = make_url((self.s.stores.offline.url or "").replace("${", "{").replace("}", ""))
        self.pg_host, self.pg_port = offline.host or "postgres", offline.port or 5432
        self.pg_user = offline.username or "tsops"
        self.pg_password_var = next(iter(PLACEHOLDER.findall(self.s.stores.offline.url or "")), None)
        self.redis_host, _, redis_port = self.s.stores.online.connection_string.split(",")[0].rpartition(":")
        self.redis_port = int(redis_port or 6379)

    # -- shared pieces ----------------------------------------------------------------------

    def meta(self, name: str, component: str, **extra: Any) -> Obj:
        return {"name": name, "namespace": self.ns, "labels": self.labels(component), **extra}

    def labels(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "tsops",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": self.s.project.replace("_", "-"),
        }

    def selector(self, component: str) -> dict[str, str]:
        return {"app.kubernetes.io/name": "tsops", "app.kubernetes.io/component": component}

    def env(self) -> list[Obj]:
        return [{"name": "TSOPS_PROJECT_DIR", "value": WORK}] + [
            {"name": n, "valueFrom": {"secretKeyRef": {"name": self.d.secret, "key": n}}}
            for n in self.secrets
        ]

    def volumes(self) -> list[Obj]:
        return [{"name": "config", "configMap": {"name": "tsops-config"}}, {"name": "work", "emptyDir": {}}]

    def mounts(self) -> list[Obj]:
        return [
            {"name": "work", "mountPath": WORK},
            {"name": "config", "mountPath": f"{WORK}/tsops.yaml", "subPath": "tsops.yaml", "readOnly": True},
        ]

    @staticmethod
    def resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> Obj:
        return {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu_limit, "memory": memory_limit},
        }

    @staticmethod
    def security() -> Obj:
        return {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def container(self, name: str, args: list[str], resources: Obj, **extra: Any) -> Obj:
        return {
            "name": name,
            "image": self.image,
            "args": args,
            "workingDir": WORK,
            "env": self.env(),
            "volumeMounts": self.mounts(),
            "resources": resources,
            "securityContext": self.security(),
            **extra,
        }

    def pod(self, containers: list[Obj], component: str, restart: str | None = None) -> Obj:
        spec: Obj = {
            "containers": containers,
            "volumes": self.volumes(),
            "securityContext": {"runAsNonRoot": True, "fsGroup": UID},
        }
        if restart:
            spec["restartPolicy"] = restart
        return {"metadata": {"labels": self.labels(component)}, "spec": spec}

    # -- the objects ------------------------------------------------------------------------

    def namespace(self) -> list[Obj]:
        return [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": self.ns, "labels": self.labels("namespace")},
            }
        ]

    def config(self) -> list[Obj]:
        grafana = _asset("grafana-dashboard.json")
        json.loads(grafana)  # a broken asset fails the render, not the cluster
        return [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": self.meta("tsops-config", "config"),
                "data": {"tsops.yaml": self.config_text},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": self.meta("tsops-grafana-dashboard", "monitoring")
                | {"labels": {**self.labels("monitoring"), "grafana_dashboard": "1"}},
                "data": {"tsops.json": grafana},
            },
        ]

    def serve(self) -> list[Obj]:
        port = self.s.serving.port
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
        container = self.container(
            "serve",
            ["serve", "--host", "0.0.0.0", "--port", str(port)],
            self.resources("500m", "1Gi", "2", "2Gi"),
            ports=[{"name": "http", "containerPort": port, "protocol": "TCP"}],
            readinessProbe=probe,
            livenessProbe=live,
            startupProbe=startup,
        )
        return [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": self.meta("tsops-serve", "serve"),
                "spec": {
                    "replicas": self.d.serve_replicas,
                    "selector": {"matchLabels": self.selector("serve")},
                    "template": self.pod([container], "serve"),
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": self.meta("tsops-serve", "serve"),
                "spec": {
                    "selector": self.selector("serve"),
                    "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
                },
            },
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PodMonitor",
                "metadata": self.meta("tsops-serve", "serve"),
                "spec": {
                    "selector": {"matchLabels": self.selector("serve")},
                    "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
                },
            },
        ]

    def stream(self) -> list[Obj]:
        kafka = self.s.stream.kafka
        container = self.container(
            "stream",
            ["stream", "--source", "kafka", "--metrics-port", "9108"],
            self.resources("500m", "1Gi", "2", "2Gi"),
            ports=[{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}],
            livenessProbe={
                "tcpSocket": {"port": "metrics"},
                "periodSeconds": 10,
                "failureThreshold": 6,
                "initialDelaySeconds": 60,
            },
        )
        return [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": self.meta("tsops-stream", "stream"),
                "spec": {
                    "replicas": self.d.stream_replicas,
                    "selector": {"matchLabels": self.selector("stream")},
                    "template": self.pod([container], "stream"),
                },
            },
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": self.meta("tsops-stream", "stream"),
                "spec": {
                    "scaleTargetRef": {"name": "tsops-stream"},
                    "minReplicaCount": 1,
                    "maxReplicaCount": self.d.partitions,  # a worker per partition at most
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
                "metadata": self.meta("tsops-stream", "stream"),
                "spec": {
                    "selector": {"matchLabels": self.selector("stream")},
                    "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
                },
            },
        ]

    def kafka(self) -> list[Obj]:
        retention_ms = int(self.d.retention_hours * 3600 * 1000)
        kafka = self.s.stream.kafka
        topics = [(kafka.events_topic, self.d.partitions)]
        for sink in [*self.s.stream.sinks, self.s.stream.dead_letter]:
            if sink.type == "kafka" and sink.topic:
                topics.append((sink.topic, self.d.partitions))
        labels = {"strimzi.io/cluster": self.kafka_cluster}
        return [
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "KafkaNodePool",
                "metadata": self.meta("dual-role", "kafka") | {"labels": {**self.labels("kafka"), **labels}},
                "spec": {
                    "replicas": self.d.kafka_replicas,
                    "roles": ["controller", "broker"],
                    "storage": {
                        "type": "jbod",
                        "volumes": [
                            {
                                "id": 0,
                                "type": "persistent-claim",
                                "size": "20Gi",
                                "deleteClaim": False,
                                "kraftMetadata": "shared",
                            }
                        ],
                    },
                },
            },
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "Kafka",
                "metadata": self.meta(self.kafka_cluster, "kafka"),
                "spec": {
                    "kafka": {
                        "listeners": [{"name": "plain", "port": 9092, "type": "internal", "tls": False}],
                        "config": {
                            "offsets.topic.replication.factor": min(3, self.d.kafka_replicas),
                            "transaction.state.log.replication.factor": min(3, self.d.kafka_replicas),
                            "transaction.state.log.min.isr": min(2, self.d.kafka_replicas),
                            "default.replication.factor": min(3, self.d.kafka_replicas),
                            "min.insync.replicas": min(2, self.d.kafka_replicas),
                        },
                    },
                    "entityOperator": {"topicOperator": {}, "userOperator": {}},
                },
            },
            *[
                {
                    "apiVersion": "kafka.strimzi.io/v1",
                    "kind": "KafkaTopic",
                    "metadata": self.meta(_k8s_name(topic), "kafka")
                    | {"labels": {**self.labels("kafka"), **labels}},
                    "spec": {
                        "topicName": topic,
                        "partitions": partitions,
                        "replicas": min(3, self.d.kafka_replicas),
                        "config": {"retention.ms": retention_ms},
                    },
                }
                for topic, partitions in topics
            ],
        ]

    def kserve(self) -> list[Obj]:
        port = self.s.serving.port
        model = self.s.model.name.replace("_", "-")
        runtime = {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "ClusterServingRuntime",
            "metadata": {"name": "tsops", "labels": self.labels("kserve")},
            "spec": {
                "supportedModelFormats": [{"name": "tsops", "version": "1", "autoSelect": True}],
                "protocolVersions": ["v2"],
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": self.image,
                        "args": ["serve", "--host", "0.0.0.0", "--port", str(port)],
                        "env": self.env(),
                        "workingDir": WORK,
                        "volumeMounts": self.mounts(),
                        "ports": [{"containerPort": port, "protocol": "TCP"}],
                        "readinessProbe": {
                            "httpGet": {"path": "/v2/health/ready", "port": port},
                            "periodSeconds": 5,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/v2/health/live", "port": port},
                            "periodSeconds": 10,
                            "failureThreshold": 6,
                            "initialDelaySeconds": 60,
                        },
                        "resources": self.resources("500m", "1Gi", "2", "2Gi"),
                        "securityContext": self.security(),
                    }
                ],
                "volumes": self.volumes(),
            },
        }
        predictor: Obj = {
            "model": {"modelFormat": {"name": "tsops"}, "runtime": "tsops", "protocolVersion": "v2"},
            "minReplicas": 1,
        }
        if self.s.serving.canary_percent > 0:
            predictor["canaryTrafficPercent"] = int(round(self.s.serving.canary_percent))
        objects = [
            runtime,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": self.meta(model, "kserve"),
                "spec": {"predictor": predictor},
            },
        ]
        if self.d.kserve_storage_uri:  # the standalone artefact, on KServe's own MLflow runtime
            objects.append(
                {
                    "apiVersion": "serving.kserve.io/v1beta1",
                    "kind": "InferenceService",
                    "metadata": self.meta(f"{model}-mlflow", "kserve"),
                    "spec": {
                        "predictor": {
                            "model": {
                                "modelFormat": {"name": "mlflow"},
                                "protocolVersion": "v2",
                                "storageUri": self.d.kserve_storage_uri,
                            }
                        }
                    },
                }
            )
        return objects

    def jobs(self) -> list[Obj]:
        small = self.resources("500m", "1Gi", "2", "4Gi")
        ingest = self.container("ingest", ["ingest"], small)
        retrain = self.container("retrain", ["retrain", "--json"], small)
        return [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": self.meta("tsops-ingest", "ingest"),
                "spec": {"backoffLimit": 2, "template": self.pod([ingest], "ingest", "OnFailure")},
            },
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": self.meta("tsops-retrain", "retrain"),
                "spec": {
                    "schedule": self.retrain_schedule(),
                    "concurrencyPolicy": "Forbid",
                    "jobTemplate": {
                        "spec": {
                            "backoffLimit": 1,  # exit 0 = decided: never retried
                            "template": self.pod([retrain], "retrain", "Never"),
                        }
                    },
                },
            },
        ]

    def retrain_schedule(self) -> str:
        if self.d.retrain_schedule:
            return self.d.retrain_schedule
        from tsops.settings import ScheduleTriggerSettings

        for t in self.s.retrain.triggers:
            if isinstance(t, ScheduleTriggerSettings):
                hours = max(1, round(_hours(t.interval)))
                return (
                    "0 * * * *"
                    if hours == 1
                    else (f"0 */{hours} * * *" if hours < 24 else f"0 0 */{max(1, hours // 24)} * *")
                )
        return "0 0 * * *"

    def spark(self) -> list[Obj]:
        spark_conf = {"spark.sql.shuffle.partitions": str(self.s.stream.spark.shuffle_partitions)}
        common = {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": self.spark_image,
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": "local:///opt/tsops/spark_main.py",
            "sparkVersion": "4.0.0",
            "sparkConf": spark_conf,
            "volumes": self.volumes(),
            "driver": {
                "cores": 1,
                "memory": "2g",
                "serviceAccount": "tsops-spark",
                "env": self.env(),
                "volumeMounts": self.mounts(),
                "labels": self.labels("spark"),
                "securityContext": self.security(),
            },
            "executor": {
                "cores": 1,
                "instances": 2,
                "memory": "2g",
                "env": self.env(),
                "volumeMounts": self.mounts(),
                "labels": self.labels("spark"),
                "securityContext": self.security(),
            },
        }
        stream = {
            **common,
            "arguments": ["stream", "--engine", "spark", "--source", "kafka"],
            "restartPolicy": {"type": "Always"},
        }
        batch = {
            **common,
            "arguments": ["batch", "--config", f"{WORK}/job.yaml"],
            "restartPolicy": {"type": "Never"},
        }
        return [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": self.meta("tsops-spark", "spark")},
            {
                "apiVersion": "sparkoperator.k8s.io/v1beta2",
                "kind": "SparkApplication",
                "metadata": self.meta("tsops-stream-spark", "spark"),
                "spec": stream,
            },
            {
                "apiVersion": "sparkoperator.k8s.io/v1beta2",
                "kind": "ScheduledSparkApplication",
                "metadata": self.meta("tsops-batch-spark", "spark"),
                "spec": {"schedule": "0 3 * * *", "concurrencyPolicy": "Forbid", "template": batch},
            },
        ]

    def mlflow(self) -> list[Obj]:
        password = f"$({self.pg_password_var})" if self.pg_password_var else ""
        backend = (
            f"postgresql://{self.pg_user}:{password}@{self.pg_host}:{self.pg_port}/{self.d.mlflow_database}"
        )
        container = {
            "name": "mlflow",
            "image": self.image,
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
                str(self.mlflow_port),
                "--allowed-hosts",
                f"{self.mlflow_host},{self.mlflow_host}.{self.ns},{self.mlflow_host}.{self.ns}.svc,localhost",
            ],
            "env": [e for e in self.env() if e["name"] != "TSOPS_PROJECT_DIR"],
            "ports": [{"name": "http", "containerPort": self.mlflow_port, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
            "livenessProbe": {
                "httpGet": {"path": "/health", "port": "http"},
                "periodSeconds": 10,
                "failureThreshold": 6,
                "initialDelaySeconds": 30,
            },
            "volumeMounts": [{"name": "artifacts", "mountPath": "/mlartifacts"}],
            "resources": self.resources("250m", "512Mi", "1", "1Gi"),
            "securityContext": self.security(),
        }
        return [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": self.meta("mlflow-artifacts", "mlflow"),
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": self.meta(self.mlflow_host, "mlflow"),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": self.selector("mlflow")},
                    "strategy": {"type": "Recreate"},
                    "template": {
                        "metadata": {"labels": self.labels("mlflow")},
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
                "metadata": self.meta(self.mlflow_host, "mlflow"),
                "spec": {
                    "selector": self.selector("mlflow"),
                    "ports": [
                        {"name": "http", "port": self.mlflow_port, "targetPort": "http", "protocol": "TCP"}
                    ],
                },
            },
        ]

    def monitoring(self) -> list[Obj]:
        rules = yaml.safe_load(_asset("prometheus-rules.yml"))
        return [
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": self.meta("tsops", "monitoring")
                | {"labels": {**self.labels("monitoring"), "release": "prometheus"}},
                "spec": rules,
            }
        ]

    # -- overlays ---------------------------------------------------------------------------

    def dev_services(self) -> list[Obj]:
        """In-cluster PostgreSQL and Redis for dev, named as the settings' hosts."""
        pg_env: list[Obj] = [
            {"name": "POSTGRES_USER", "value": self.pg_user},
            {"name": "POSTGRES_DB", "value": self.d.mlflow_database},
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ]
        if self.pg_password_var:
            pg_env.append(
                {
                    "name": "POSTGRES_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": self.d.secret, "key": self.pg_password_var}},
                }
            )
        databases = sorted({self.d.mlflow_database, *self._databases()})
        init = "\n".join(f"CREATE DATABASE {db};" for db in databases if db != self.d.mlflow_database)
        postgres = {
            "name": "postgres",
            "image": "postgres:16-bookworm",
            "env": pg_env,
            "ports": [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}],
            "readinessProbe": {"exec": {"command": ["pg_isready", "-U", self.pg_user]}, "periodSeconds": 5},
            "livenessProbe": {"exec": {"command": ["pg_isready", "-U", self.pg_user]}, "periodSeconds": 10},
            "volumeMounts": [
                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True},
            ],
            "resources": self.resources("100m", "256Mi", "1", "1Gi"),
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
            "resources": self.resources("100m", "128Mi", "500m", "512Mi"),
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
                "metadata": self.meta(name, component),
                "spec": {
                    "selector": self.selector(component),
                    "ports": [{"name": target, "port": port, "targetPort": target, "protocol": "TCP"}],
                },
            }

        def deployment(name: str, component: str, container: Obj, volumes: list[Obj]) -> Obj:
            return {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": self.meta(name, component),
                "spec": {
                    "replicas": 1,
                    "strategy": {"type": "Recreate"},
                    "selector": {"matchLabels": self.selector(component)},
                    "template": {
                        "metadata": {"labels": self.labels(component)},
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
                "metadata": self.meta("postgres-init", "postgres"),
                "data": {"databases.sql": init + "\n"},
            },
            deployment(
                self.pg_host,
                "postgres",
                postgres,
                [{"name": "data", "emptyDir": {}}, {"name": "init", "configMap": {"name": "postgres-init"}}],
            ),
            service(self.pg_host, "postgres", self.pg_port, "postgres"),
            deployment(self.redis_host, "redis", redis, []),
            service(self.redis_host, "redis", self.redis_port, "redis"),
        ]

    def _databases(self) -> list[str]:
        urls = [
            self.s.stores.offline.url,
            self.s.stores.registry_url,
            self.s.monitoring.database,
            self.s.tune.storage,
        ]
        out = []
        for url in urls:
            if url and url.startswith("postgres"):
                parsed = make_url(url.replace("${", "{").replace("}", ""))
                if parsed.database:
                    out.append(parsed.database)
        return out

    def prod_objects(self) -> list[Obj]:
        return [
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": self.meta("tsops-serve", "serve"),
                "spec": {"minAvailable": 1, "selector": {"matchLabels": self.selector("serve")}},
            },
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": self.meta("tsops-stream", "stream"),
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": self.selector("stream")}},
            },
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": self.meta("tsops-serve", "serve"),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tsops-serve"},
                    "minReplicas": self.d.serve_replicas,
                    "maxReplicas": self.d.serve_max_replicas,
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

    def anti_affinity(self, component: str) -> Obj:
        return {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": self.selector(component)},
                        },
                    }
                ]
            }
        }


def _hours(duration: str) -> float:
    import pandas as pd

    return pd.Timedelta(duration).total_seconds() / 3600


def _k8s_name(topic: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", topic.lower()).strip("-")[:63] or "topic"


BASE_FILES = (
    "namespace",
    "config",
    "mlflow",
    "serve",
    "kserve",
    "kafka",
    "stream",
    "spark",
    "jobs",
    "monitoring",
)


def render(project: Project, out: Path, image: str | None = None) -> Rendered:
    """Write `out/base`, `out/overlays/dev`, `out/overlays/prod`; refuses (ConfigError, nothing
    written) settings that cannot run on a cluster."""
    check_deployable(project)
    m = Manifests(project, image)
    files: dict[str, str] = {}
    for name in BASE_FILES:
        files[f"base/{name}.yaml"] = _dump(getattr(m, name)())
    files["base/kustomization.yaml"] = yaml.safe_dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"{n}.yaml" for n in BASE_FILES],
        },
        sort_keys=False,
    )
    files["overlays/dev/services.yaml"] = _dump(m.dev_services())
    files["overlays/dev/kustomization.yaml"] = yaml.safe_dump(_dev_kustomization(m), sort_keys=False)
    files["overlays/prod/policies.yaml"] = _dump(m.prod_objects())
    files["overlays/prod/kustomization.yaml"] = yaml.safe_dump(_prod_kustomization(m), sort_keys=False)
    if out.exists():
        shutil.rmtree(out / "base", ignore_errors=True)
        shutil.rmtree(out / "overlays", ignore_errors=True)
    result = Rendered(out, secrets=m.secrets)
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        result.files.append(path)
    return result


def _patch(kind: str, name: str, ops: list[Obj], group: str = "apps", version: str = "v1") -> Obj:
    return {
        "target": {"group": group, "version": version, "kind": kind, "name": name},
        "patch": yaml.safe_dump(ops),
    }


def _dev_kustomization(m: Manifests) -> Obj:
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


def _prod_kustomization(m: Manifests) -> Obj:
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
                        "value": m.anti_affinity(component),
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
