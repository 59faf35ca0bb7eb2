"""Command-line mistakes print one message and exit with code 2, never a traceback, whichever
copy of click (click itself or the one Typer bundles) raised them."""

from __future__ import annotations

import os

import pytest

import tsops
from conftest import run_cli

MISTAKES = {
    "trian": "No such command 'trian'. Did you mean 'train'",
    "train --quik": "No such option: --quik",
    "init": "Missing argument 'directory'",
    "promote --version x": "Invalid value for '--version'",
}


@pytest.mark.parametrize("args", list(MISTAKES))
def test_a_command_line_mistake_is_one_message_and_exit_2(args: str) -> None:
    result = run_cli(*args.split(), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and MISTAKES[args] in lines[0]
    assert "--help" in lines[0]


def test_plain_tsops_prints_the_help_and_exits_2() -> None:
    result = run_cli(timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "Usage: tsops" in result.stdout and "train" in result.stdout


def test_version_prints_the_version() -> None:
    result = run_cli("--version", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tsops {tsops.__version__}"


def test_usage_errors_of_click_and_of_typers_bundled_click_are_both_caught() -> None:
    import click

    from tsops.cli import _usage_error_classes

    usage, aborts = _usage_error_classes()
    assert click.exceptions.ClickException in usage and click.exceptions.Abort in aborts
    try:
        import typer._click.exceptions as bundled
    except ImportError:
        return  # an older Typer raises click's own classes
    assert bundled.ClickException in usage


def test_stream_without_a_source_says_which_sources_exist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tsops.scaffold import init_example

    init_example(tmp_path / "p", "synthetic", entities=2)  # stream.source: file, no stream.path
    result = run_cli("stream", "--project", str(tmp_path / "p"), timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: --source: no event source: pass --source file:PATH (a CSV or JSONL of events) or "
        "--source kafka (stream.kafka.*), or set stream.path (or stream.source: kafka) in tsops.yaml"
    )
    unknown = run_cli("stream", "--project", str(tmp_path / "p"), "--source", "kafak", timeout=300)
    assert unknown.returncode == 2
    assert "unknown source 'kafak': use --source file:PATH" in unknown.stderr


def test_spark_engine_without_pyspark_says_to_install_the_extra(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tsops.scaffold import init_example

    init_example(tmp_path / "p", "synthetic", entities=2)
    blocker = tmp_path / "no-pyspark"  # an environment without the `spark` extra
    (blocker / "pyspark").mkdir(parents=True)
    (blocker / "pyspark" / "__init__.py").write_text("raise ImportError(\"No module named 'pyspark'\")\n")
    path = os.pathsep.join([str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])])
    args = ("stream", "--engine", "spark", "--source", "kafka", "--project", str(tmp_path / "p"))
    result = run_cli(*args, env={"PYTHONPATH": path}, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: --engine: the Spark engine needs pyspark, which tsops installs only with the spark "
        "extra: pip install 'tsops[spark]' (make setup does); or use the default engine"
    )
