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

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tsops.deploy import operators, overlays, roles
from tsops.deploy.checks import check_deployable
from tsops.deploy.manifests import Manifests, Obj
from tsops.settings import Project


@dataclass
class Rendered:
    root: Path
    files: list[Path] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # keys the Secret must hold


def _dump(objects: list[Obj]) -> str:
    return "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objects)


BUILDERS: dict[str, Callable[[Manifests], list[Obj]]] = {
    "namespace": roles.namespace,
    "config": roles.config,
    "mlflow": roles.mlflow,
    "serve": roles.serve,
    "kserve": operators.kserve,
    "kafka": operators.kafka,
    "stream": roles.stream,
    "spark": operators.spark,
    "jobs": roles.jobs,
    "monitoring": operators.monitoring,
}
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
        files[f"base/{name}.yaml"] = _dump(BUILDERS[name](m))
    files["base/kustomization.yaml"] = yaml.safe_dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"{n}.yaml" for n in BASE_FILES],
        },
        sort_keys=False,
    )
    files["overlays/dev/services.yaml"] = _dump(overlays.dev_services(m))
    dev, prod = overlays.dev_kustomization(m), overlays.prod_kustomization(m)
    files["overlays/dev/kustomization.yaml"] = yaml.safe_dump(dev, sort_keys=False)
    files["overlays/prod/policies.yaml"] = _dump(overlays.prod_objects(m))
    files["overlays/prod/kustomization.yaml"] = yaml.safe_dump(prod, sort_keys=False)
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
