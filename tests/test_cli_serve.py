"""`tsops serve` is wired into the command line and refuses an exposed bind without a token."""

from __future__ import annotations

from conftest import run_cli


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
