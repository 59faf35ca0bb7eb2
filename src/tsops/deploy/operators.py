"""The operators' resources: Strimzi Kafka and topics, KServe's runtime and InferenceServices,
the spark-operator's applications, the Prometheus Operator's rules. (KEDA's ScaledObject and
the PodMonitors sit with the workloads they watch, in `roles.py`.)"""

from __future__ import annotations

import re

import yaml

from tsops.deploy.manifests import WORK, Manifests, Obj, asset


def _k8s_name(topic: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", topic.lower()).strip("-")[:63] or "topic"


def kafka(m: Manifests) -> list[Obj]:
    retention_ms = int(m.d.retention_hours * 3600 * 1000)
    kafka = m.s.stream.kafka
    topics = [(kafka.events_topic, m.d.partitions)]
    for sink in [*m.s.stream.sinks, m.s.stream.dead_letter]:
        if sink.type == "kafka" and sink.topic:
            topics.append((sink.topic, m.d.partitions))
    labels = {"strimzi.io/cluster": m.kafka_cluster}
    return [
        {
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "KafkaNodePool",
            "metadata": m.meta("dual-role", "kafka") | {"labels": {**m.labels("kafka"), **labels}},
            "spec": {
                "replicas": m.d.kafka_replicas,
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
            "metadata": m.meta(m.kafka_cluster, "kafka"),
            "spec": {
                "kafka": {
                    "listeners": [{"name": "plain", "port": 9092, "type": "internal", "tls": False}],
                    "config": {
                        "offsets.topic.replication.factor": min(3, m.d.kafka_replicas),
                        "transaction.state.log.replication.factor": min(3, m.d.kafka_replicas),
                        "transaction.state.log.min.isr": min(2, m.d.kafka_replicas),
                        "default.replication.factor": min(3, m.d.kafka_replicas),
                        "min.insync.replicas": min(2, m.d.kafka_replicas),
                    },
                },
                "entityOperator": {"topicOperator": {}, "userOperator": {}},
            },
        },
        *[
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "KafkaTopic",
                "metadata": m.meta(_k8s_name(topic), "kafka") | {"labels": {**m.labels("kafka"), **labels}},
                "spec": {
                    "topicName": topic,
                    "partitions": partitions,
                    "replicas": min(3, m.d.kafka_replicas),
                    "config": {"retention.ms": retention_ms},
                },
            }
            for topic, partitions in topics
        ],
    ]


def kserve(m: Manifests) -> list[Obj]:
    port = m.s.serving.port
    model = m.s.model.name.replace("_", "-")
    runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime",
        "metadata": {"name": "tsops", "labels": m.labels("kserve")},
        "spec": {
            "supportedModelFormats": [{"name": "tsops", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": m.image,
                    "args": ["serve", "--host", "0.0.0.0", "--port", str(port)],
                    "env": m.env(),
                    "workingDir": WORK,
                    "volumeMounts": m.mounts(),
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
                    "resources": m.resources("500m", "1Gi", "2", "2Gi"),
                    "securityContext": m.security(),
                }
            ],
            "volumes": m.volumes(),
        },
    }
    predictor: Obj = {
        "model": {"modelFormat": {"name": "tsops"}, "runtime": "tsops", "protocolVersion": "v2"},
        "minReplicas": 1,
    }
    if m.s.serving.canary_percent > 0:
        predictor["canaryTrafficPercent"] = int(round(m.s.serving.canary_percent))
    objects = [
        runtime,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": m.meta(model, "kserve"),
            "spec": {"predictor": predictor},
        },
    ]
    if m.d.kserve_storage_uri:  # the standalone artefact, on KServe's own MLflow runtime
        objects.append(
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": m.meta(f"{model}-mlflow", "kserve"),
                "spec": {
                    "predictor": {
                        "model": {
                            "modelFormat": {"name": "mlflow"},
                            "protocolVersion": "v2",
                            "storageUri": m.d.kserve_storage_uri,
                        }
                    }
                },
            }
        )
    return objects


def spark(m: Manifests) -> list[Obj]:
    spark_conf = {"spark.sql.shuffle.partitions": str(m.s.stream.spark.shuffle_partitions)}
    common = {
        "type": "Python",
        "pythonVersion": "3",
        "mode": "cluster",
        "image": m.spark_image,
        "imagePullPolicy": "IfNotPresent",
        "mainApplicationFile": "local:///opt/tsops/main.py",
        "sparkVersion": "4.0.0",
        "sparkConf": spark_conf,
        "volumes": m.volumes(),
        "driver": {
            "cores": 1,
            "memory": "2g",
            "serviceAccount": "tsops-spark",
            "env": m.env(),
            "volumeMounts": m.mounts(),
            "labels": m.labels("spark"),
            "securityContext": m.security(),
        },
        "executor": {
            "cores": 1,
            "instances": 2,
            "memory": "2g",
            "env": m.env(),
            "volumeMounts": m.mounts(),
            "labels": m.labels("spark"),
            "securityContext": m.security(),
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
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": m.meta("tsops-spark", "spark")},
        {
            "apiVersion": "sparkoperator.k8s.io/v1beta2",
            "kind": "SparkApplication",
            "metadata": m.meta("tsops-stream-spark", "spark"),
            "spec": stream,
        },
        {
            "apiVersion": "sparkoperator.k8s.io/v1beta2",
            "kind": "ScheduledSparkApplication",
            "metadata": m.meta("tsops-batch-spark", "spark"),
            "spec": {"schedule": "0 3 * * *", "concurrencyPolicy": "Forbid", "template": batch},
        },
    ]


def monitoring(m: Manifests) -> list[Obj]:
    rules = yaml.safe_load(asset("prometheus-rules.yml"))
    return [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": m.meta("tsops", "monitoring")
            | {"labels": {**m.labels("monitoring"), "release": "prometheus"}},
            "spec": rules,
        }
    ]
