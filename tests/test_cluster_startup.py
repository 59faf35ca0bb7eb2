"""Cluster mode, start-up: a role waits (bounded, logged) for the services its settings name,
then works; a service that never comes gives one line naming it and a non-zero exit; refused
credentials never echo the secret."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

from conftest import PG_PASSWORD_VAR, TSOPS, postgres_offline, run_cli, write_synthetic_project
from servers import RedisServer, free_port


def test_a_role_waits_for_a_paused_service_then_works(tmp_path) -> None:
    with RedisServer() as redis_server:
        project = write_synthetic_project(
            tmp_path / "proj",
            extra={
                "stores": {
                    "online": {"type": "redis", "connection_string": f"127.0.0.1:{redis_server.port}"}
                },
                "startup": {"wait_s": 60, "retry_every_s": 0.5},
            },
        )
        assert redis_server._proc is not None
        redis_server._proc.send_signal(signal.SIGSTOP)  # an outage that keeps the server's state
        threading.Timer(
            6.0, lambda: redis_server._proc and redis_server._proc.send_signal(signal.SIGCONT)
        ).start()
        started = time.monotonic()
        done = run_cli("ingest", "--project", str(project.root), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert time.monotonic() - started > 5.5  # it waited for the outage to end
        assert "waiting for the Redis online store" in done.stderr
        assert "Traceback" not in done.stderr
        assert redis_server.client().dbsize() > 0  # and then wrote the online store


def test_a_service_gone_for_good_gives_one_line_naming_it_and_exit_3(tmp_path) -> None:
    port = free_port()  # nothing listens here
    project = write_synthetic_project(
        tmp_path / "proj",
        extra={
            "stores": {"online": {"type": "redis", "connection_string": f"127.0.0.1:{port}"}},
            "startup": {"wait_s": 2, "retry_every_s": 0.5},
        },
    )
    for role in (["ingest"], ["serve", "--port", str(free_port())]):
        started = time.monotonic()
        done = subprocess.run(
            [*TSOPS, *role, "--project", str(project.root)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 3, (role, done.stderr[-2000:])
        assert time.monotonic() - started < 60
        last = done.stderr.strip().splitlines()[-1]
        assert "Redis online store" in last and f"127.0.0.1:{port}" in last and "after 2 s" in last
        assert "Traceback" not in done.stderr


def test_refused_credentials_name_the_service_and_never_the_secret(
    stream_model, postgres_server, tmp_path, monkeypatch
) -> None:
    offline = postgres_offline(postgres_server, "wrong_password")
    monkeypatch.setenv(PG_PASSWORD_VAR, "not-the-password-42")
    project = write_synthetic_project(
        tmp_path / "proj",
        tracking_uri=stream_model.tracking_uri,
        extra={"stores": {"offline": offline}, "startup": {"wait_s": 1, "retry_every_s": 0.5}},
    )
    done = run_cli("train", "--quick", "--project", str(project.root), timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]  # refused, not unreachable: no waiting
    assert "PostgreSQL offline store" in done.stderr and "password authentication failed" in done.stderr
    everything = done.stdout + done.stderr
    assert "not-the-password-42" not in everything and postgres_server.password not in everything
    assert "Traceback" not in everything


def test_the_example_cluster_configuration_is_valid_and_names_its_secrets() -> None:
    from pathlib import Path

    from tsops.settings import Project

    project = Project.load(Path(__file__).parent.parent / "examples" / "cluster", environ={})
    s = project.settings
    assert project.tracking_server and s.stores.offline.type == "postgres" and s.stream.source == "kafka"
    assert (
        "${TSOPS_DB_PASSWORD}" in (s.stores.offline.url or "")
        and s.serving.admin_token == "${TSOPS_ADMIN_TOKEN}"
    )


def test_an_online_store_gone_for_good_mid_run_ends_the_worker_naming_it(stream_model, tmp_path) -> None:
    import json

    from conftest import synthetic_events, write_jsonl

    with RedisServer() as redis_server:
        project = write_synthetic_project(
            tmp_path / "proj",
            tracking_uri=stream_model.tracking_uri,
            extra={
                "stores": {"online": {"type": "redis", "connection_string": f"127.0.0.1:{redis_server.port}"}}
            },
        )
        from tsops.features.ingest import ingest

        ingest(project, quiet=True)
        events = synthetic_events(project, 40)
        path = write_jsonl(tmp_path / "events.jsonl", events[:50])
        predictions = project.state_dir / "predictions.jsonl"
        worker = subprocess.Popen(
            [*TSOPS, "stream", "--project", str(project.root), "--source", f"file:{path}", "--follow"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (predictions.exists() and predictions.read_text().count("\n") >= 50):
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[1][-2000:]
            time.sleep(0.3)
        assert redis_server._proc is not None
        redis_server._proc.kill()  # gone for good
        redis_server._proc.wait()
        with path.open("a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in events[50:]))
        _, err = worker.communicate(timeout=120)
    assert worker.returncode == 2, err[-2000:]
    assert "Redis online store" in err and "Traceback" not in err
    written = {json.loads(line)["key"].rsplit("|", 1)[0] for line in predictions.read_text().splitlines()}
    assert len(written) >= 50  # what was made durable before stays
