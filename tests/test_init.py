"""`tsops init` writes ready projects; bad input is refused clearly with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from conftest import run_cli
from tsops.settings import Project


def test_weather_example_is_real_two_city_data_and_a_feast_repo(tmp_path: Path) -> None:
    result = run_cli("init", str(tmp_path / "w"), "--example", "weather")
    assert result.returncode == 0, result.stderr
    project = Project.load(tmp_path / "w", environ={})
    history = pd.read_parquet(project.data_path)
    assert sorted(history["city"].unique()) == ["san_francisco", "seattle"]
    assert history["date"].dt.year.unique().tolist() == [2010]
    assert len(history) > 17000
    listing = run_cli_feast(project.feature_repo)
    assert "series_features" in listing


def run_cli_feast(repo: Path) -> str:
    import subprocess
    import sys

    feast = Path(sys.executable).parent / "feast"
    out = subprocess.run(
        [str(feast), "-c", str(repo), "feature-views", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_synthetic_example_has_50_reproducible_entities(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert run_cli("init", str(tmp_path / name), "--example", "synthetic").returncode == 0
    a = pd.read_parquet(tmp_path / "a" / "data" / "history.parquet")
    b = pd.read_parquet(tmp_path / "b" / "data" / "history.parquet")
    assert a["entity_id"].nunique() == 50
    pd.testing.assert_frame_equal(a, b)
    settings = Project.load(tmp_path / "a", environ={}).settings
    assert settings.data.synthetic is not None and settings.data.synthetic.seed == 42


def test_own_csv_without_entity_becomes_a_single_series_with_inferred_freq(tmp_path: Path) -> None:
    times = pd.date_range("2024-01-01", periods=500, freq="15min")
    pd.DataFrame({"when": times, "kw": range(500)}).to_csv(tmp_path / "load.csv", index=False)
    result = run_cli(
        "init",
        str(tmp_path / "p"),
        "--data",
        str(tmp_path / "load.csv"),
        "--time",
        "when",
        "--target",
        "kw",
    )
    assert result.returncode == 0, result.stderr
    series = Project.load(tmp_path / "p", environ={}).settings.series
    assert series.freq == "15min" and series.entity is None and series.entity_col == "series_id"


def test_own_parquet_with_entity_column(tmp_path: Path) -> None:
    times = pd.date_range("2024-01-01", periods=100, freq="1h")
    frame = pd.concat([pd.DataFrame({"shop": s, "t": times, "sales": 1.0}) for s in "xy"])
    frame.to_parquet(tmp_path / "sales.parquet")
    result = run_cli(
        "init",
        str(tmp_path / "p"),
        "--data",
        str(tmp_path / "sales.parquet"),
        "--time",
        "t",
        "--target",
        "sales",
        "--entity",
        "shop",
    )
    assert result.returncode == 0, result.stderr
    assert Project.load(tmp_path / "p", environ={}).settings.series.freq == "h"


def test_unknown_example_is_refused(tmp_path: Path) -> None:
    result = run_cli("init", str(tmp_path / "x"), "--example", "stocks")
    assert result.returncode == 2
    assert "unknown example 'stocks'" in result.stderr
    assert not (tmp_path / "x" / "tsops.yaml").exists()


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    result = run_cli(
        "init",
        str(tmp_path / "x"),
        "--data",
        str(tmp_path / "nope.csv"),
        "--time",
        "t",
        "--target",
        "y",
    )
    assert result.returncode == 2
    assert "nope.csv" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_csv_without_the_time_column_is_refused_naming_it(tmp_path: Path) -> None:
    pd.DataFrame({"ts": ["2024-01-01"], "y": [1]}).to_csv(tmp_path / "h.csv", index=False)
    result = run_cli(
        "init",
        str(tmp_path / "x"),
        "--data",
        str(tmp_path / "h.csv"),
        "--time",
        "timestamp",
        "--target",
        "y",
    )
    assert result.returncode == 2
    assert "['timestamp']" in result.stderr
    assert not (tmp_path / "x").exists()


def test_existing_project_is_not_overwritten(tmp_path: Path) -> None:
    assert run_cli("init", str(tmp_path / "w"), "--example", "synthetic").returncode == 0
    result = run_cli("init", str(tmp_path / "w"), "--example", "weather")
    assert result.returncode == 2 and "already exists" in result.stderr
