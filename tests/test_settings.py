"""tsops.yaml is validated at start-up: bad, missing or unknown fields are refused by path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from tsops.errors import ConfigError
from tsops.settings import Project

VALID = {
    "project": "demo",
    "data": {"path": "data/history.csv"},
    "schema": {"entity": "site", "time": "ts", "target": "load"},
    "model": {"name": "demo"},
}


def write(tmp_path: Path, raw: dict) -> Path:
    (tmp_path / "tsops.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def test_valid_settings_get_defaults(tmp_path: Path) -> None:
    p = Project.load(write(tmp_path, VALID), environ={})
    assert p.settings.model.horizon == 24
    assert p.settings.series.entity_col == "site"
    assert p.tracking_uri.startswith("sqlite:///") and str(tmp_path) in p.tracking_uri


def test_unknown_field_is_refused_with_its_path(tmp_path: Path) -> None:
    raw = {**VALID, "model": {"name": "demo", "horizn": 12}}
    with pytest.raises(ConfigError) as e:
        Project.load(write(tmp_path, raw), environ={})
    assert "model.horizn: unknown field" in str(e.value)


def test_missing_and_bad_fields_are_all_named(tmp_path: Path) -> None:
    raw = {**VALID, "schema": {"time": "ts"}, "model": {"name": "demo", "horizon": 0}}
    with pytest.raises(ConfigError) as e:
        Project.load(write(tmp_path, raw), environ={})
    text = str(e.value)
    assert "schema.target: Field required" in text
    assert "model.horizon" in text and "greater than or equal to 1" in text


def test_window_shorter_than_season_is_refused(tmp_path: Path) -> None:
    raw = {**VALID, "features": {"window": 12}}
    with pytest.raises(ConfigError, match="window"):
        Project.load(write(tmp_path, raw), environ={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    p = Project.load(
        write(tmp_path, VALID),
        environ={"TSOPS_MODEL__EPOCHS": "3", "TSOPS_STORES__ONLINE__TYPE": "redis"},
    )
    assert p.settings.model.epochs == 3
    assert p.settings.stores.online.type == "redis"


def test_bad_environment_override_is_refused_by_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.epochs"):
        Project.load(write(tmp_path, VALID), environ={"TSOPS_MODEL__EPOCHS": "many"})


def test_cli_refuses_typo_with_exit_code_2_and_no_traceback(tmp_path: Path) -> None:
    write(tmp_path, {**VALID, "schema": {**VALID["schema"], "targt": "x"}})
    result = run_cli("status", "--project", str(tmp_path))
    assert result.returncode == 2
    assert "schema.targt: unknown field" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_without_project_says_how_to_create_one(tmp_path: Path) -> None:
    result = run_cli("ingest", "--project", str(tmp_path))
    assert result.returncode == 2
    assert "tsops init" in result.stderr
