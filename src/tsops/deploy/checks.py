"""Settings that cannot run on a cluster, refused before anything is rendered: one problem per
field, all at once (`tsops deploy render` exits 2 and writes nothing)."""

from __future__ import annotations

from urllib.parse import urlsplit

from tsops.errors import ConfigError
from tsops.services import is_loopback
from tsops.settings import Project


def deploy_problems(project: Project) -> list[str]:
    """Each setting that keeps this project from running as separate pods, with the reason."""
    s = project.settings
    problems = []
    if not project.tracking_server:
        problems.append(
            "tracking.uri: pods share no disk: use an MLflow tracking server (http://mlflow:5000), "
            f"not {'the embedded SQLite store' if s.tracking.uri is None else 'a local store'}"
        )
    if s.stores.online.type != "redis":
        problems.append("stores.online.type: the SQLite online store is a local file: use redis")
    if s.stores.offline.type != "postgres":
        problems.append("stores.offline.type: the Parquet offline store is a local file: use postgres")
    if not s.stores.registry_url:
        problems.append("stores.registry_url: Feast's registry file is local: set a database URL")
    if not s.monitoring.database:
        problems.append("monitoring.database: the SQLite history is a local file: set a database URL")
    if s.stream.source != "kafka":
        problems.append("stream.source: a file event source is local to one pod: use kafka")
    for i, sink in enumerate([*s.stream.sinks, s.stream.dead_letter]):
        where = f"stream.sinks.{i}" if i < len(s.stream.sinks) else "stream.dead_letter"
        if sink.type == "file":
            problems.append(f"{where}.type: a file sink is local to one pod: use kafka or sql")
    if is_loopback(s.serving.host):
        problems.append(
            f"serving.host: {s.serving.host} is not reachable from another pod: bind 0.0.0.0 "
            "(with serving.admin_token, a ${NAME} secret)"
        )
    elif not s.serving.admin_token:
        problems.append("serving.admin_token: a server reachable from other pods needs a token (${NAME})")
    if s.deploy.stream_replicas > s.deploy.partitions:
        problems.append(
            f"deploy.stream_replicas: {s.deploy.stream_replicas} workers for {s.deploy.partitions} "
            "partitions: the extra workers would idle; at most deploy.partitions"
        )
    if s.deploy.serve_replicas > s.deploy.serve_max_replicas:
        problems.append("deploy.serve_replicas: above deploy.serve_max_replicas")
    if project.tracking_server and not urlsplit(project.tracking_uri).hostname:
        problems.append("tracking.uri: no host")
    return problems


def check_deployable(project: Project) -> None:
    problems = deploy_problems(project)
    if problems:
        raise ConfigError(
            f"these settings cannot run on a cluster ({len(problems)} problem(s)); see docs/cluster.md",
            str(project.root / "tsops.yaml"),
            problems,
        )
