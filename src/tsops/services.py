"""The network services a role needs, waited for at start.

In cluster mode a role (a pod) starts beside the services it uses and may come up first. Before
doing any work it checks each service its settings name (the MLflow tracking server or
database, the PostgreSQL offline store, Feast's SQL registry, the Redis online store, the Kafka
broker, the monitoring database), retrying with a clear log line until `startup.wait_s`, then
gives up with a `ServiceUnavailable` naming the service (exit 3, never a traceback and
never a half-started process). A service that answers and refuses (wrong password, unknown user
or database) is not waited for: `ServiceRefused`, exit 2 at once. Embedded defaults (files,
SQLite) need no wait.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tsops.errors import ConfigError, StoreError
from tsops.secrets import redacted, resolve_text, resolve_url
from tsops.settings import Project

log = logging.getLogger("tsops.services")


class ServiceUnavailable(StoreError):
    """A service a role needs did not answer within `startup.wait_s`."""

    kind = "service_unavailable"
    exit_code = 3


class ServiceRefused(StoreError):
    """A service answered and refused us (wrong password, unknown user or database): waiting
    will not help, the settings or secrets must change (exit 2)."""

    kind = "service_refused"
    exit_code = 2


# Answers that mean "reachable, but these credentials or names are wrong". Anything else
# (connection refused, timeout, DNS, a server still starting) may pass: it is retried.
_REFUSALS = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "does not exist",  # database or role
    "wrongpass",
    "invalid password",
    "invalid username-password",
    "noauth",
    "access denied",
    "sasl authentication",
)
_REFUSED_HTTP = (401, 403)


def refused(e: BaseException) -> bool:
    """True when `e` is the service refusing us rather than not answering."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in _REFUSED_HTTP:
        return True
    text = f"{type(e).__name__} {e} {getattr(e, 'orig', '')}".lower()
    return "authenticationerror" in text or any(r in text for r in _REFUSALS)


@dataclass(frozen=True)
class Service:
    name: str  # what a user calls it: "MLflow tracking server", "Redis online store", ...
    address: str  # shown in messages: no password
    probe: Callable[[], None]  # raises while the service cannot be used


def _http(url: str) -> Callable[[], None]:
    def probe() -> None:
        import httpx

        httpx.get(url, timeout=3).raise_for_status()

    return probe


def _sql(url: str, where: str) -> Callable[[], None]:
    def probe() -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(resolve_url(url, where), connect_args=_connect_timeout(url))
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()

    return probe


def _connect_timeout(url: str) -> dict[str, int]:
    return {"connect_timeout": 3} if url.startswith(("postgres", "mysql")) else {}


def _redis(connection_string: str) -> Callable[[], None]:
    def probe() -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        host_port, *options = resolve_text(connection_string, "stores.online.connection_string").split(",")
        host, _, port = host_port.rpartition(":")
        kwargs = dict(o.split("=", 1) for o in options if "=" in o)
        client = redis.Redis(
            host=host or "127.0.0.1",
            port=int(port or 6379),
            password=kwargs.get("password"),
            ssl=kwargs.get("ssl", "").lower() == "true",
            socket_connect_timeout=3,
            socket_timeout=3,
            retry=Retry(NoBackoff(), 0),  # one attempt per probe: the wait loop retries
        )
        try:
            client.ping()
        finally:
            client.close()

    return probe


def _kafka(project: Project) -> Callable[[], None]:
    def probe() -> None:
        from confluent_kafka.admin import AdminClient

        kafka = project.settings.stream.kafka
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, **kafka.extra})
        admin.list_topics(timeout=3)

    return probe


def needed(project: Project, role: str, *, kafka: bool = False) -> list[Service]:
    """The network services `role` (serve, stream, ingest, train, retrain, batch, tune, monitor,
    status, promote, rollback)
    uses with these settings; empty for the embedded defaults."""
    s = project.settings
    out: list[Service] = []
    if project.tracking_server:
        out.append(
            Service("MLflow tracking server", project.tracking_uri, _http(f"{project.tracking_uri}/health"))
        )
    elif not project.tracking_uri.startswith("sqlite"):
        out.append(
            Service(
                "MLflow tracking database",
                redacted(project.tracking_uri),
                _sql(project.tracking_uri, "tracking.uri"),
            )
        )
    if (
        role in ("ingest", "train", "retrain", "stream", "tune", "monitor")
        and s.stores.offline.type == "postgres"
    ):
        url = s.stores.offline.url or ""
        out.append(Service("PostgreSQL offline store", redacted(url), _sql(url, "stores.offline.url")))
    if s.stores.registry_url:
        out.append(
            Service(
                "Feast registry database",
                redacted(s.stores.registry_url),
                _sql(s.stores.registry_url, "stores.registry_url"),
            )
        )
    if role in ("ingest", "serve", "stream", "retrain", "status") and s.stores.online.type == "redis":
        address = s.stores.online.connection_string.split(",")[0]
        out.append(Service("Redis online store", address, _redis(s.stores.online.connection_string)))
    uses_kafka = any(sink.type == "kafka" for sink in [*s.stream.sinks, s.stream.dead_letter])
    if role == "stream" and (uses_kafka or kafka or s.stream.source == "kafka"):
        out.append(Service("Kafka broker", s.stream.kafka.bootstrap_servers, _kafka(project)))
    if role in ("serve", "stream", "retrain", "monitor") and s.monitoring.database:
        url = s.monitoring.database
        out.append(Service("monitoring database", redacted(url), _sql(url, "monitoring.database")))
    return out


def wait_for(services: list[Service], wait_s: float, every_s: float = 2.0) -> None:
    """Until every service answers; `ServiceUnavailable` naming the first that did not within
    `wait_s` seconds (each waiting attempt is logged, so a pod's log says what it waits for)."""
    deadline = time.monotonic() + wait_s
    for service in services:
        attempt = 0
        while True:
            attempt += 1
            try:
                service.probe()
                if attempt > 1:
                    log.warning(
                        "%s at %s answers (after %d attempts)", service.name, service.address, attempt
                    )
                break
            except ConfigError:
                raise  # a secret that is not set: waiting will not help
            except Exception as e:  # any other failure means "not usable yet"
                reason = _reason(e)
                if refused(e):
                    message = f"{service.address} refused us: {reason}; check the settings and secrets"
                    raise ServiceRefused(message, service.name) from None
                if time.monotonic() + every_s > deadline:
                    message = f"cannot reach {service.address} after {wait_s:.0f} s: {reason}"
                    raise ServiceUnavailable(message, service.name) from None
                log.warning(
                    "waiting for the %s at %s (attempt %d: %s)",
                    service.name,
                    service.address,
                    attempt,
                    reason,
                )
                time.sleep(every_s)


def _reason(e: Exception) -> str:
    cause = getattr(e, "orig", None) or e  # SQLAlchemy: the driver's own message, no SQL dump
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(e).__name__
    return text[:200]


def is_loopback(host: str) -> bool:
    """Whether a listening host is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere
