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
