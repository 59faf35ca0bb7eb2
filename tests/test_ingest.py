"""Ingest: gaps and duplicates handled by policy and counted; bad data named; the previous
offline store survives an interrupted ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from tsops.data.history import clean_history
from tsops.errors import DataError
from tsops.settings import SeriesSettings


def messy() -> pd.DataFrame:
    t = pd.date_range("2024-01-01", periods=10, freq="1h")
    frame = pd.DataFrame({"id": "a", "t": t, "y": np.arange(10.0)})
    frame = frame.drop(index=[3, 4])  # a two-step gap
    dup = pd.DataFrame({"id": ["a"], "t": [t[5]], "y": [50.0]})  # duplicate of step 5
    return pd.concat([frame, dup], ignore_index=True)


def policy(**kw: str) -> SeriesSettings:
    return SeriesSettings(entity="id", time="t", target="y", **kw)  # type: ignore[arg-type]


def test_gaps_interpolated_and_duplicates_last_wins_are_counted() -> None:
    out, summary = clean_history(messy(), policy())
    assert summary.gaps == 2 and summary.duplicates == 1
    assert len(out) == 10
    assert out["y"].iloc[3] == pytest.approx(2 + (50 - 2) / 3)  # between 2 and last-wins 50
    assert out["y"].iloc[5] == 50.0


def test_forward_fill_and_mean_policies() -> None:
    out, _ = clean_history(messy(), policy(gaps="ffill", duplicates="mean"))
    assert out["y"].iloc[5] == pytest.approx(27.5)
    assert out["y"].iloc[3] == out["y"].iloc[4] == 2.0


def test_refuse_policies_name_the_problem() -> None:
    with pytest.raises(DataError, match="duplicate timestamp"):
        clean_history(messy(), policy(duplicates="refuse"))
    with pytest.raises(DataError, match="2 missing step"):
        clean_history(messy(), policy(gaps="refuse"))


def test_non_numeric_target_names_the_row() -> None:
    frame = messy()
    frame["y"] = frame["y"].astype(object)
    frame.loc[6, "y"] = "n/a"
    with pytest.raises(DataError) as e:
        clean_history(frame, policy(), "h.csv")
    assert "row 7" in str(e.value) and "'n/a'" in str(e.value) and "column 'y'" in str(e.value)


def test_bad_timestamp_names_the_row() -> None:
    frame = messy()
    frame["t"] = frame["t"].astype(str)
    frame.loc[2, "t"] = "yesterday"
    with pytest.raises(DataError, match="row 3: 'yesterday' is not a timestamp"):
        clean_history(frame, policy(), "h.csv")


def test_cli_ingest_of_non_numeric_target_exits_2(tmp_path: Path) -> None:
    t = pd.date_range("2024-01-01", periods=400, freq="1h")
    data = pd.DataFrame({"t": t, "y": np.arange(400.0)})
    data.to_csv(tmp_path / "h.csv", index=False)
    assert (
        run_cli(
            "init",
            str(tmp_path / "p"),
            "--data",
            str(tmp_path / "h.csv"),
            "--time",
            "t",
            "--target",
            "y",
        ).returncode
        == 0
    )
    data["y"] = data["y"].astype(object)
    data.loc[10, "y"] = "oops"
    data.to_csv(tmp_path / "h.csv", index=False)
    result = run_cli("ingest", "--project", str(tmp_path / "p"))
    assert result.returncode == 2
    assert "row 11" in result.stderr and "'oops'" in result.stderr
    assert "Traceback" not in result.stderr


def test_interrupted_offline_write_leaves_previous_store_intact(weather_project, monkeypatch) -> None:
    from tsops.features.store import FeatureStoreClient

    client = FeatureStoreClient(weather_project)
    before = client.read_offline()

    def crash_midway(self: pd.DataFrame, path: Path, *a: object, **kw: object) -> None:
        Path(path).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        client.write_offline(before.head(10))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(client.read_offline(), before)


def test_training_after_a_feature_edit_without_ingest_says_to_ingest(tmp_path: Path) -> None:
    import yaml

    from tsops.features.ingest import ingest
    from tsops.features.store import FeatureStoreClient
    from tsops.scaffold import init_example
    from tsops.settings import Project

    root = tmp_path / "p"
    ingest(init_example(root, "synthetic", entities=2), quiet=True)
    raw = yaml.safe_load((root / "tsops.yaml").read_text())
    raw["features"]["rolling"] = [*raw["features"]["rolling"], 7]
    (root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    result = run_cli("train", "--quick", "--project", str(root))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: features: features changed since the last ingest: run tsops ingest"

    project = Project.load(root, environ={})
    ingest(project, quiet=True)
    FeatureStoreClient(project).require_ingested()  # in step again: training may read them
