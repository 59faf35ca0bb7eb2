"""A user sees tsops' own output and nothing else unless they ask (`--verbose`): no
third-party warnings, no Feast banner, no spinner left behind, no colour codes when piped."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli, write_synthetic_project


def test_piped_ingest_and_train_print_only_tsops_lines_without_colour_codes(tmp_path: Path) -> None:
    root = str(write_synthetic_project(tmp_path / "p").root)
    ingest = run_cli("ingest", "--project", root)
    assert ingest.returncode == 0, ingest.stderr
    assert ingest.stderr == ""
    assert ingest.stdout.startswith("ingested ") and len(ingest.stdout.splitlines()) == 1  # not wrapped

    train = run_cli("train", "--quick", "--project", root)
    assert train.returncode == 0, train.stderr
    assert train.stderr == ""  # no MLflow type-hint warning, no "Successfully registered model"
    assert train.stdout.startswith("Backtest on the held-out tail")
    assert train.stdout.splitlines()[-1].startswith("registered version 1 as challenger")
    for out in (ingest.stdout, train.stdout):
        assert "\x1b[" not in out and "Materializing" not in out and "Warning" not in out

    verbose = run_cli("ingest", "--project", root, "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "Materializing" in verbose.stdout  # Feast's own output, on request
