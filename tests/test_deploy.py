"""`tsops deploy render`: the kustomize tree of a cluster-mode project, built by kustomize and
validated object by object without a cluster: core kinds strictly against Kubernetes' own
schemas (kubernetes-validate), custom resources strictly against the operators' published CRD
schemas (kept beside the project at ../shared/crds/), and the cross-object rules no schema
holds (selectors, named ports, partitions, settings, image, resources, probes, non-root,
no secret values)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_cli, write_synthetic_project
from tsops.settings import Project, _env_overrides, _merge, validate

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO.parent / "shared" / "crds"
KUBERNETES = "1.33.0"
CLUSTER = {
    "tracking": {"uri": "http://mlflow:5000"},
    "stores": {
        "online": {"type": "redis", "connection_string": "redis:6379"},
        "offline": {"type": "postgres", "url": "postgresql://tsops:${TSOPS_DB_PASSWORD}@postgres:5432/tsops"},
        "registry_url": "postgresql://tsops:${TSOPS_DB_PASSWORD}@postgres:5432/feast",
    },
    "monitoring": {"database": "postgresql://tsops:${TSOPS_DB_PASSWORD}@postgres:5432/tsops"},
    "stream": {
        "source": "kafka",
        "sinks": [{"type": "kafka", "topic": "tsops.predictions"}],
        "dead_letter": {"type": "kafka", "topic": "tsops.dead-letters"},
        "kafka": {"bootstrap_servers": "tsops-kafka-bootstrap:9092", "events_topic": "tsops.events"},
    },
    "serving": {"host": "0.0.0.0", "admin_token": "${TSOPS_ADMIN_TOKEN}", "canary_percent": 10},
    "deploy": {"partitions": 6, "stream_replicas": 3, "kserve_storage_uri": "s3://models/synthetic/champion"},
}


def cluster_project(root: Path, **overrides: Any) -> Project:
    write_synthetic_project(root)
    raw = yaml.safe_load((root / "tsops.yaml").read_text())
    raw.update(copy.deepcopy(CLUSTER))
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    (root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return Project.load(root, environ={})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """The dev and prod overlays of a cluster-mode project, as kustomize builds them."""
    base = tmp_path_factory.mktemp("deploy")
    project = cluster_project(base / "proj")
    out = base / "k8s"
    done = run_cli(
        "deploy",
        "render",
        "--out",
        str(out),
        "--project",
        str(project.root),
        "--image",
        "registry.example/tsops:1.2.3",
    )
    assert done.returncode == 0, done.stderr
    built = {}
    for overlay in ("dev", "prod"):
        kustomize = subprocess.run(
            ["kubectl", "kustomize", str(out / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert kustomize.returncode == 0, kustomize.stderr
        built[overlay] = [d for d in yaml.safe_load_all(kustomize.stdout) if d]
    built["text"] = [{"text": "\n".join(p.read_text() for p in sorted(out.rglob("*.yaml")))}]
    return built


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["weather", "synthetic"])
def test_embedded_settings_are_refused_naming_each_field_and_nothing_is_written(
    example: str, tmp_path: Path
) -> None:
    from tsops.scaffold import init_example

    init_example(tmp_path / "proj", example)
    done = run_cli("deploy", "render", "--out", str(tmp_path / "k8s"), "--project", str(tmp_path / "proj"))
    assert done.returncode == 2, done.stderr
    for field in (
        "tracking.uri",
        "stores.online.type",
        "stores.offline.type",
        "stream.source",
        "serving.host",
    ):
        assert field in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "k8s").exists()


def test_more_workers_than_partitions_is_refused(tmp_path: Path) -> None:
    project = cluster_project(tmp_path / "proj", deploy={"partitions": 2, "stream_replicas": 3})
    done = run_cli("deploy", "render", "--out", str(tmp_path / "k8s"), "--project", str(project.root))
    assert done.returncode == 2 and "deploy.stream_replicas" in done.stderr
    assert not (tmp_path / "k8s").exists()


# -- schemas ------------------------------------------------------------------------------


def _crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _strict(node: Any) -> Any:
    """A structural schema as a JSON Schema the way the API server applies it: unknown fields
    refused (unless preserved), int-or-string, nullable."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in node
    ):
        out["additionalProperties"] = False
    return out


def test_both_overlays_build_and_core_kinds_validate_strictly(rendered) -> None:
    import kubernetes_validate

    for overlay in ("dev", "prod"):
        core = [
            d
            for d in rendered[overlay]
            if "." not in d["apiVersion"].split("/")[0]
            or d["apiVersion"].startswith(("apps/", "batch/", "policy/", "autoscaling/"))
        ]
        assert {d["kind"] for d in core} >= {
            "Namespace",
            "ConfigMap",
            "Deployment",
            "Service",
            "Job",
            "CronJob",
        }
        for doc in core:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_custom_resources_validate_against_the_operators_crds(rendered) -> None:
    if not CRDS.is_dir():
        pytest.skip(f"the operators' CRD schemas are not beside this clone ({CRDS})")
    import jsonschema

    schemas = _crd_schemas()
    seen = set()
    for overlay in ("dev", "prod"):
        for doc in rendered[overlay]:
            key = (doc["apiVersion"], doc["kind"])
            if key not in schemas:
                continue
            seen.add(doc["kind"])
            errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(doc), key=str)
            assert not errors, f"{overlay} {doc['kind']}/{doc['metadata']['name']}: " + "; ".join(
                f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
            )
    assert seen >= {
        "InferenceService",
        "ClusterServingRuntime",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "ScaledObject",
        "SparkApplication",
        "ScheduledSparkApplication",
        "PrometheusRule",
        "PodMonitor",
    }


def test_the_strict_crd_check_catches_an_unknown_field() -> None:
    if not CRDS.is_dir():
        pytest.skip(f"the operators' CRD schemas are not beside this clone ({CRDS})")
    import jsonschema

    schema = _crd_schemas()[("keda.sh/v1alpha1", "ScaledObject")]
    bad = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "d"}, "maxReplicas": 3, "triggers": []},
    }
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


# -- rules no schema holds ----------------------------------------------------------------


def _pod_specs(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(name, pod spec, pod labels) of every workload."""
    out = []
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "Job"):
            out.append(
                (d["metadata"]["name"], spec["template"]["spec"], spec["template"]["metadata"]["labels"])
            )
        elif d["kind"] == "CronJob":
            t = spec["jobTemplate"]["spec"]["template"]
            out.append((d["metadata"]["name"], t["spec"], t["metadata"]["labels"]))
        elif d["kind"] == "ClusterServingRuntime":
            out.append((d["metadata"]["name"], spec, {}))
    return out


def test_cross_object_rules(rendered) -> None:
    for overlay in ("dev", "prod"):
        docs = rendered[overlay]
        by_kind: dict[str, list[dict]] = {}
        for d in docs:
            by_kind.setdefault(d["kind"], []).append(d)
        pods = _pod_specs(docs)
        ports_of = {}
        for d in by_kind["Deployment"]:
            labels = d["spec"]["template"]["metadata"]["labels"]
            selector = d["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), d["metadata"]["name"]  # the selector selects its pods
            ports_of[d["metadata"]["name"]] = {
                p["name"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
            }
        for svc in by_kind["Service"]:  # a Service selects a workload and names ports it has
            targets = [
                d
                for d in by_kind["Deployment"]
                if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert targets, f"Service {svc['metadata']['name']} selects no pods"
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in ports_of[targets[0]["metadata"]["name"]]
        for pm in by_kind["PodMonitor"]:
            targets = [
                d
                for d in by_kind["Deployment"]
                if pm["spec"]["selector"]["matchLabels"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert targets and all(
                e["port"] in ports_of[targets[0]["metadata"]["name"]]
                for e in pm["spec"]["podMetricsEndpoints"]
            )
        for name, spec, _ in pods:
            for c in spec["containers"]:
                named = {p["name"] for p in c.get("ports", []) if "name" in p}
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    port = (c.get(probe, {}).get("httpGet") or c.get(probe, {}).get("tcpSocket") or {}).get(
                        "port"
                    )
                    assert port is None or isinstance(port, int) or port in named, (name, probe)
                assert c["resources"]["requests"] and c["resources"]["limits"], name
                assert c["securityContext"]["runAsNonRoot"] is True, name
                if c.get("ports"):  # whatever serves is probed
                    assert "readinessProbe" in c or "livenessProbe" in c, name
        images = {
            c["image"]
            for n, spec, _ in pods
            for c in spec["containers"]
            if not n.startswith(("postgres", "redis"))
        }
        assert images == {"registry.example/tsops:1.2.3"}  # one image for every role
        # Workers never outnumber the events topic's partitions; KEDA's maximum neither.
        topic = next(t for t in by_kind["KafkaTopic"] if t["spec"]["topicName"] == "tsops.events")
        worker = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "tsops-stream")
        scaled = by_kind["ScaledObject"][0]
        assert worker["spec"]["replicas"] <= topic["spec"]["partitions"]
        assert scaled["spec"]["maxReplicaCount"] <= topic["spec"]["partitions"]
        # The worker's metrics and /healthz listen beyond loopback: the kubelet and the
        # PodMonitor reach the pod's address, not its 127.0.0.1.
        (args,) = [c["args"] for c in worker["spec"]["template"]["spec"]["containers"]]
        assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
        # The ConfigMap's tsops.yaml and every TSOPS_* variable pass tsops' own validation.
        config = next(c for c in by_kind["ConfigMap"] if c["metadata"]["name"] == "tsops-config")
        raw = yaml.safe_load(config["data"]["tsops.yaml"])
        plain = {
            e["name"]: e["value"]
            for _, spec, _ in pods
            for c in spec["containers"]
            for e in c.get("env", [])
            if e["name"].startswith("TSOPS_") and "value" in e
        }
        validate(_merge(raw, _env_overrides(plain)), "ConfigMap tsops-config + TSOPS_* variables")
        # The names the settings point at exist: MLflow, Redis and PostgreSQL in dev, Kafka.
        services = {s["metadata"]["name"] for s in by_kind["Service"]}
        assert "mlflow" in services
        if overlay == "dev":
            assert {"postgres", "redis"} <= services
        assert by_kind["Kafka"][0]["metadata"]["name"] == "tsops"  # tsops-kafka-bootstrap
        isvc = next(i for i in by_kind["InferenceService"] if i["metadata"]["name"] == "synthetic")
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    prod = {(d["kind"], d["metadata"]["name"]) for d in rendered["prod"]}
    assert {("PodDisruptionBudget", "tsops-serve"), ("HorizontalPodAutoscaler", "tsops-serve")} <= prod
    serve = next(
        d for d in rendered["prod"] if d["kind"] == "Deployment" and d["metadata"]["name"] == "tsops-serve"
    )
    assert "podAntiAffinity" in serve["spec"]["template"]["spec"]["affinity"]


def test_no_secret_value_is_rendered(rendered) -> None:
    text = rendered["text"][0]["text"]
    assert "kind: Secret\n" not in text  # referenced by name only
    for doc in rendered["dev"] + rendered["prod"]:
        if doc["kind"] == "Secret":
            pytest.fail("a Secret object was rendered")
    assert re.search(r"secretKeyRef:\s*\n\s*name: tsops-secrets\s*\n\s*key: TSOPS_DB_PASSWORD", text)
    assert "${TSOPS_DB_PASSWORD}" in text  # the ConfigMap keeps the placeholder


def test_kserve_canary_rules_that_live_in_its_webhook(rendered) -> None:
    """KServe's webhook (not its CRD schema) refuses a canary percent outside 0..100 and a
    predictor naming both a runtime and a format the runtime does not support."""
    runtimes = {r["metadata"]["name"]: r for r in rendered["dev"] if r["kind"] == "ClusterServingRuntime"}
    for isvc in (d for d in rendered["dev"] if d["kind"] == "InferenceService"):
        predictor = isvc["spec"]["predictor"]
        assert 0 <= predictor.get("canaryTrafficPercent", 0) <= 100
        model = predictor["model"]
        if "runtime" in model:
            formats = {f["name"] for f in runtimes[model["runtime"]]["spec"]["supportedModelFormats"]}
            assert model["modelFormat"]["name"] in formats
            assert set(runtimes[model["runtime"]]["spec"]["protocolVersions"]) >= {model["protocolVersion"]}
        else:
            assert "storageUri" in model  # KServe's own MLflow runtime downloads the artefact


def test_kubectl_is_available() -> None:
    assert shutil.which("kubectl"), "kubectl (with kustomize) is needed: make setup installs it"
