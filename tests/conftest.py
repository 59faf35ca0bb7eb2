"""Shared fixtures: real servers on free loopback ports, one per test session.

A server that cannot start fails the tests that need it, with the reason;
it never skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from servers import PostgresServer, RedisServer, ServerStartError, free_port

__all__ = ["free_port"]


def _start_or_fail(fixture: str, start: Callable[[], object]) -> None:
    """Start a server; on failure fail (never skip) with the server's own reason."""
    reason = None
    try:
        start()
    except ServerStartError as exc:
        reason = str(exc)
    if reason is not None:
        pytest.fail(f"{fixture} fixture could not start its server:\n{reason}", pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A `redis-server` without persistence: `.host`, `.port`, `.url`, `.client()`."""
    server = RedisServer()
    _start_or_fail("redis_server", server.start)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster: `.host`, `.port`, `.user`, `.password`, `.url`,
    `.create_database(name) -> url`, `.url_for(name)`, `.connect(name)`."""
    server = PostgresServer()
    _start_or_fail("postgres_server", server.start)
    try:
        yield server
    finally:
        server.stop()


# --- tsops projects shared by the tests (built once per session) ---------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

TSOPS = [sys.executable, "-m", "tsops"]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real `tsops` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*TSOPS, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def weather_project(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The weather example, initialised and ingested (SQLite online store)."""
    from tsops.features.ingest import ingest
    from tsops.scaffold import init_example

    project = init_example(tmp_path_factory.mktemp("weather") / "proj", "weather")
    ingest(project, quiet=True)
    return project


@pytest.fixture(scope="session")
def trained_weather(weather_project):  # type: ignore[no-untyped-def]
    """The weather example after one quick training (version 1, challenger) and promotion."""
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train

    outcome = train(weather_project, quick=True, show_progress=False)
    promote(weather_project)
    return outcome
