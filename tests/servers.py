"""Real Redis and PostgreSQL servers on free loopback ports, for tests.

Each server runs in its own directory under /tmp (not pytest's tmp_path: when
tests run as root, PostgreSQL must run as an unprivileged user, who cannot
enter pytest's 0700 directories). A server that cannot start raises
`ServerStartError` carrying the tail of its log, so a fixture fails with the
reason instead of hanging or skipping.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import redis
from psycopg2 import sql

from tsops.demo_broker import BrokerError, EmbeddedBroker

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
START_ATTEMPTS = 3  # a free port can be taken by someone else before we bind it
UNPRIVILEGED_USER = "nobody"


class ServerStartError(RuntimeError):
    """A test server did not come up; the message holds its log tail."""


def free_port() -> int:
    """Return a TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


def _make_server_dir(prefix: str, owner_uid: int | None, owner_gid: int | None) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    directory.chmod(0o755)
    if owner_uid is not None and owner_gid is not None:
        os.chown(directory, owner_uid, owner_gid)
    return directory


def _stop_process(proc: subprocess.Popen[bytes] | None, stop_signal: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(stop_signal)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _wait_until_ready(
    name: str,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    probe: Callable[[], None],
) -> None:
    """Call `probe` until it stops raising; fail fast if the process dies."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(
                f"{name} exited with code {proc.returncode} during start-up.\n"
                f"--- {log_path} ---\n{_tail(log_path)}"
            )
        try:
            probe()
            return
        except Exception as exc:  # any failure means "not ready yet"
            last_error = exc
            time.sleep(0.1)
    raise ServerStartError(
        f"{name} did not answer within {START_TIMEOUT_S:.0f}s (last error: {last_error}).\n"
        f"--- {log_path} ---\n{_tail(log_path)}"
    )


def _start_on_free_port(
    name: str,
    directory: Path,
    log_path: Path,
    command: Callable[[int], list[str]],
    probe: Callable[[], None],
    set_port: Callable[[int], None],
) -> subprocess.Popen[bytes]:
    """Start `command(port)` on a free port until `probe` answers (a port can be taken by
    someone else before the server binds it: a few attempts); the running process."""
    error: ServerStartError | None = None
    for _ in range(START_ATTEMPTS):
        port = free_port()
        set_port(port)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        try:
            _wait_until_ready(name, proc, log_path, probe)
            return proc
        except ServerStartError as exc:
            error = exc
            _stop_process(proc, signal.SIGKILL)
    assert error is not None
    raise error


def wait_for_http(
    name: str, url: str, proc: subprocess.Popen[Any], log: Callable[[], str], timeout: float = 120
) -> None:
    """Until `GET url` answers 200 (an HTTP server started as `proc`, e.g. `tsops serve` or
    `mlflow models serve`); kills it and raises `ServerStartError` with `log()`'s tail if it
    exits or does not answer in time."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise ServerStartError(f"{name} did not start:\n{log()[-3000:]}")
        time.sleep(0.3)


class _Launched:
    """A server process started by `_start_on_free_port`; subclasses define `stop()`."""

    port: int
    _proc: subprocess.Popen[bytes] | None

    stop_signal: int = signal.SIGTERM
    directory: Path | None = None

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        _stop_process(self._proc, self.stop_signal)
        self._proc = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _tree(self) -> list[Any]:
        import psutil

        assert self._proc is not None
        root = psutil.Process(self._proc.pid)
        return [root, *root.children(recursive=True)]

    def pause(self) -> None:
        """An outage that keeps the server's state: SIGSTOP to it and every process it forked
        (PostgreSQL's backends, the tracking server's workers)."""
        for process in self._tree():
            process.suspend()

    def resume(self) -> None:
        for process in self._tree():
            process.resume()

    def _set_port(self, port: int) -> None:
        self.port = port

    def _launch(
        self,
        name: str,
        directory: Path,
        log_name: str,
        command: Callable[[int], list[str]],
        probe: Callable[[], None],
    ) -> None:
        try:
            self._proc = _start_on_free_port(
                name, directory, directory / log_name, command, probe, self._set_port
            )
        except ServerStartError:
            self.stop()  # removes the server's directory
            raise


class RedisServer(_Launched):
    """A throw-away `redis-server` without persistence, bound to loopback."""

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client for database 0 of this server."""
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerStartError("redis-server is not installed (run `make setup`)")
        directory = self.directory = _make_server_dir("tsops-redis-", None, None)

        def command(port: int) -> list[str]:
            return [binary, "--port", str(port), "--bind", self.host, "--save", "", "--appendonly", "no",
                    "--dir", str(directory), "--daemonize", "no"]  # fmt: skip

        self._launch("redis-server", directory, "redis.log", command, self._ping)
        return self

    def _ping(self) -> None:
        with self.client(socket_connect_timeout=1, socket_timeout=1) as client:
            client.ping()


def find_postgres_bindir() -> Path:
    """The `bin` directory of the newest PostgreSQL under /usr/lib/postgresql."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not candidates:
        raise ServerStartError(
            "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb (run `make setup`)"
        )

    def version(path: str) -> tuple[int, ...]:
        number = Path(path).parent.parent.name
        return tuple(int(part) for part in re.findall(r"\d+", number))

    return Path(max(candidates, key=version)).parent


class PostgresServer(_Launched):
    """A throw-away PostgreSQL cluster with password auth on loopback.

    As root, the cluster is created and run as `nobody`, since PostgreSQL
    refuses to run as root.
    """

    def __init__(self, user: str = "tsops") -> None:
        self.host = LOOPBACK
        self.port = 0
        self.user = user
        self.password = secrets.token_hex(12)
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_as: list[str] = []
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            self._run_as = [
                "setpriv",
                f"--reuid={self._uid}",
                f"--regid={self._gid}",
                "--clear-groups",
                "--",
            ]

    @property
    def url(self) -> str:
        """URL of the default `postgres` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> Any:
        """A raw psycopg2 connection to `database`."""
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            **kwargs,
        )

    def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; return its SQLAlchemy URL."""
        conn = self.connect(connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return self.url_for(name)

    def start(self) -> PostgresServer:
        bindir = find_postgres_bindir()
        self.directory = _make_server_dir("tsops-pg-", self._uid, self._gid)
        self._initdb(bindir)
        directory = self.directory

        def command(port: int) -> list[str]:
            return [*self._run_as, str(bindir / "postgres"), "-D", str(directory / "data"),
                    "-p", str(port), "-k", str(directory), "-c", f"listen_addresses={self.host}",
                    "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off"]  # fmt: skip

        self._launch("postgres", directory, "postgres.log", command, self._probe)
        return self

    def _initdb(self, bindir: Path) -> None:
        assert self.directory is not None
        password_file = self.directory / "pwfile"
        password_file.write_text(self.password + "\n")
        if self._uid is not None and self._gid is not None:
            os.chown(password_file, self._uid, self._gid)
        password_file.chmod(0o600)
        result = subprocess.run(
            [
                *self._run_as,
                str(bindir / "initdb"),
                "-D",
                str(self.directory / "data"),
                "-U",
                self.user,
                f"--pwfile={password_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
        )
        password_file.unlink()
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()[-30:]
            self.stop()
            raise ServerStartError(f"initdb failed with code {result.returncode}:\n" + "\n".join(output))

    def _probe(self) -> None:
        self.connect(connect_timeout=1).close()

    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown: abort sessions, then exit cleanly


class KafkaBroker(EmbeddedBroker):
    """The package's embedded tansu broker (`tsops.demo_broker`), plus `read_all()`."""

    def start(self) -> KafkaBroker:
        try:
            super().start()
        except BrokerError as exc:
            raise ServerStartError(str(exc)) from None
        return self

    def read_all(self, topic: str, *, expected: int, timeout: float = 60) -> list[bytes]:
        """Every message of a topic, polling until `expected` arrived (never trusting
        the broker's possibly stale high watermarks)."""
        with self.reader(topic) as reader:
            deadline = time.time() + timeout
            while len(reader.messages) < expected and time.time() < deadline:
                reader.poll()
            return reader.messages

    def reader(self, topic: str) -> TopicReader:
        """A topic's messages from its beginning, read as they arrive (`TopicReader`)."""
        return TopicReader(self.bootstrap, topic)


class TopicReader:
    """`poll()` adds a topic's new messages to `messages` (all of them since the topic's
    beginning) and returns them: one consumer for as long as the reader lives, so a test that
    waits on a topic neither joins a new group nor reads the whole topic again each time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        import uuid

        from confluent_kafka import Consumer

        self.messages: list[bytes] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": uuid.uuid4().hex,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 2000,
                "heartbeat.interval.ms": 400,
                "topic.metadata.refresh.interval.ms": 1000,
                # A test may not poll for minutes (a retrain job runs): staying in the group
                # keeps its position, where rejoining would read the topic again from the start.
                "max.poll.interval.ms": 3_600_000,
            }
        )
        self._consumer.subscribe([topic])

    def poll(self, timeout: float = 0.5) -> list[bytes]:
        """Wait up to `timeout` s for new messages; every message read so far."""
        for m in self._consumer.consume(500, timeout):
            value = m.value()
            if m.error() is None and value is not None:
                self.messages.append(value)
        return self.messages

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrometheusServer(_Launched):
    """A throw-away Prometheus (the Debian `prometheus` package) on loopback, scraping the given
    targets every second and evaluating the given rule files every second."""

    def __init__(self, targets: dict[str, list[str]], rule_files: list[Path] | None = None) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.targets = targets  # job name → ["host:port", ...] (scraped at /metrics)
        self.rule_files = rule_files or []
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> str:
        import yaml

        return yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in self.rule_files],
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": hosts}]}
                    for job, hosts in self.targets.items()
                ],
            },
            sort_keys=False,
        )

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ServerStartError("prometheus is not installed (run `make setup`)")
        self.directory = _make_server_dir("tsops-prometheus-", None, None)
        directory = self.directory
        config = directory / "prometheus.yml"
        config.write_text(self.config())

        def command(port: int) -> list[str]:
            return [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address={self.host}:{port}",
                    "--storage.tsdb.retention.time=1h"]  # fmt: skip

        self._launch("prometheus", directory, "prometheus.log", command, self._ready)
        return self

    def _ready(self) -> None:
        import httpx

        httpx.get(f"{self.url}/-/ready", timeout=1).raise_for_status()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        import httpx

        body = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {promql!r} failed: {body}")
        return list(body["data"]["result"])

    def api(self, path: str) -> Any:
        """`data` of a GET on the HTTP API, e.g. `targets`, `rules`, `alerts`."""
        import httpx

        body = httpx.get(f"{self.url}/api/v1/{path}", timeout=10).json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus /api/v1/{path} failed: {body}")
        return body["data"]

    def log(self) -> str:
        return _tail(self.directory / "prometheus.log", 40) if self.directory else "<no log>"


class MlflowTrackingServer(_Launched):
    """A throw-away `mlflow server`: runs and the registry in a PostgreSQL database, artefacts
    behind the server's own proxy (`mlflow-artifacts:/`), as a cluster runs it. A client needs
    nothing but the URL: it never sees the server's artefact folder."""

    def __init__(self, backend_store_uri: str) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.backend_store_uri = backend_store_uri
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MlflowTrackingServer:
        import sys

        binary = Path(sys.executable).parent / "mlflow"
        self.directory = _make_server_dir("tsops-mlflow-", None, None)
        directory = self.directory

        def command(port: int) -> list[str]:
            return [str(binary), "server", "--backend-store-uri", self.backend_store_uri,
                    "--artifacts-destination", str(directory / "artifacts"),
                    "--default-artifact-root", "mlflow-artifacts:/", "--serve-artifacts",
                    "--host", self.host, "--port", str(port), "--workers", "1"]  # fmt: skip

        self._launch("mlflow server", directory, "mlflow.log", command, self._ready)
        return self

    def _ready(self) -> None:
        import httpx

        httpx.get(f"{self.url}/health", timeout=1).raise_for_status()

    def log(self) -> str:
        return _tail(self.directory / "mlflow.log", 40) if self.directory else "<no log>"
