"""The server fixtures give working, isolated servers."""

from __future__ import annotations

import socket

import psycopg2
import pytest
import redis
import sqlalchemy as sa

from servers import PostgresServer, RedisServer, free_port


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_server_stores_and_returns_a_value(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    with redis_server.client() as client:
        client.set("tsops:test", "42")
        assert client.get("tsops:test") == b"42"


def test_redis_server_url_works_with_from_url(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping() is True


def test_postgres_database_round_trips_rows(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("fixture_check")
    assert url.startswith("postgresql+psycopg2://")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE readings (entity TEXT, value DOUBLE PRECISION)"))
            conn.execute(
                sa.text("INSERT INTO readings VALUES (:entity, :value)"),
                [{"entity": "a", "value": 1.5}, {"entity": "b", "value": 2.5}],
            )
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT entity, value FROM readings ORDER BY entity")).all()
        assert [tuple(row) for row in rows] == [("a", 1.5), ("b", 2.5)]
    finally:
        engine.dispose()


def test_postgres_create_database_is_idempotent(postgres_server: PostgresServer) -> None:
    first = postgres_server.create_database("fixture_again")
    assert postgres_server.create_database("fixture_again") == first


def test_postgres_rejects_a_wrong_password(postgres_server: PostgresServer) -> None:
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            password="wrong",
            dbname="postgres",
            connect_timeout=5,
        )
