"""The pieces every object of the Kubernetes tree shares: names and labels, the pod template (the
mounted `tsops.yaml` in an emptyDir project folder, the secrets as environment variables from
the Secret, non-root), resources, and the hosts the settings name."""

from __future__ import annotations

from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from tsops.errors import ConfigError
from tsops.secrets import PLACEHOLDER
from tsops.settings import Project

Obj = dict[str, Any]
WORK = "/work"  # each pod's project folder: an emptyDir holding the mounted tsops.yaml
UID = 10001  # the image's non-root user
STRIMZI_BOOTSTRAP = "-kafka-bootstrap"


def asset(name: str) -> str:
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
