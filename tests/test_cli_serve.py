"""`tsops serve` is wired into the command line and refuses an exposed bind without a token."""

from __future__ import annotations

from conftest import free_port, run_cli


def test_serve_refuses_a_non_loopback_bind_without_a_token(weather_project) -> None:
    result = run_cli(
        "serve",
        "--project",
        str(weather_project.root),
        "--host",
        "0.0.0.0",
        env={"TSOPS_SERVING__ADMIN_TOKEN": ""},
    )
    assert result.returncode == 2
    assert "serving.host" in result.stderr and "admin token" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_a_champion_says_to_train_and_promote(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tsops.scaffold import init_example

    init_example(tmp_path / "p", "synthetic", entities=2)
    result = run_cli("serve", "--project", str(tmp_path / "p"), "--port", str(free_port()), timeout=300)
    assert result.returncode == 2, result.stderr
    assert "no champion: run tsops train and tsops promote" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_prints_where_it_listens_once_ready(stream_model) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess

    import httpx

    from conftest import TSOPS

    port = free_port()
    proc = subprocess.Popen(
        [*TSOPS, "serve", "--project", str(stream_model.root), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the server is ready (or has exited)
        url = f"http://127.0.0.1:{port}"
        assert first.startswith("serving champion v"), first
        lines = [first] + [proc.stdout.readline() for _ in range(3)]
        text = "".join(lines)
        assert f"{url}/" in text and f"{url}/docs" in text and "dashboard" in text
        assert httpx.get(f"{url}/docs", timeout=10).status_code == 200  # it does listen there
    finally:
        proc.terminate()
        proc.wait(timeout=60)
