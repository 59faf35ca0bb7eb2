"""`tsops tune` on the weather example: a real Optuna study (SQLite under .tsops/, or a real
PostgreSQL), real MLflow runs, real training with tiny settings given as TSOPS_* overrides."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import TSOPS, run_cli
from tsops.errors import ConfigError
from tsops.features.store import FeatureStoreClient
from tsops.models import dataset
from tsops.models.studies import PARENT_RUN_ATTR, REASON_ATTR
from tsops.models.tuning import tune
from tsops.settings import Project

EXPERIMENT = "weather-tuning-tests"
TINY = {  # a trial is a few seconds: tiny networks, few epochs, short input windows
    "TSOPS_TRACKING__EXPERIMENT": EXPERIMENT,
    "TSOPS_MODEL__NAME": "weather_tuned",
    "TSOPS_MODEL__EPOCHS": "2",
    "TSOPS_MODEL__HIDDEN_SIZE": "8",
    "TSOPS_MODEL__BATCH_SIZE": "512",
    "TSOPS_MODEL__INPUT_WINDOW": "8",
    "TSOPS_MODEL__THREADS": "1",  # a shared 2-core machine: one thread per process is fastest
    "TSOPS_TUNE__SEED": "7",
    "TSOPS_TUNE__PRUNER_STARTUP_TRIALS": "1",
    "TSOPS_TUNE__PRUNER_WARMUP_EPOCHS": "0",
    "TSOPS_TUNE__SPACE__INPUT_WINDOW": "{choices: [8, 16]}",
    "TSOPS_TUNE__SPACE__HIDDEN_SIZE": "{low: 4, high: 12}",
    "TSOPS_TUNE__SPACE__NUM_LAYERS": "",
    "TSOPS_TUNE__SPACE__DROPOUT": "",
    "TSOPS_TUNE__SPACE__LEARNING_RATE": "{low: 0.001, high: 0.01, log: true}",
    "TSOPS_TUNE__SPACE__BATCH_SIZE": "{choices: [512]}",
    "TSOPS_TUNE__SPACE__EPOCHS": "{low: 1, high: 3}",
}


def tiny(study: str, **more: str) -> dict[str, str]:
    return {**TINY, "TSOPS_TUNE__STUDY": study, **more}


def load(weather_project: Project, env: dict[str, str]) -> Project:
    return Project.load(weather_project.root, environ=env)


def mlflow_runs(project: Project, study: str) -> tuple[object, list]:  # type: ignore[type-arg]
    """(parent run, child runs) of a study in the test experiment."""
    client = MlflowClient(project.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.`tsops.study` = '{study}'")
    parents = [
        r for r in runs if r.info.run_name.startswith("tune-") and "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], sorted(children, key=lambda r: int(r.data.tags["tsops.trial"]))


def write_settings(tmp_path: Path, tune: dict) -> Path:  # type: ignore[type-arg]
    raw = {
        "project": "demo",
        "data": {"path": "history.csv"},
        "schema": {"time": "ts", "target": "load"},
        "model": {"name": "demo"},
        "tune": tune,
    }
    (tmp_path / "tsops.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def test_bad_search_space_is_refused_naming_the_field(tmp_path: Path) -> None:
    cases = {
        "tune.space.hidden_size: Value error, empty range: low 64 > high 16": {
            "space": {"hidden_size": {"low": 64, "high": 16}}
        },
        "tune.space.learning_rate: Value error, low -0.001: Input should be greater than 0": {
            "space": {"learning_rate": {"low": -0.001, "high": 0.01}}
        },
        "tune.space.hiden_size: unknown field": {"space": {"hiden_size": {"low": 4, "high": 8}}},
        "tune.space.input_window: 96 exceeds features.window (48)": {
            "space": {"input_window": {"low": 8, "high": 96}}
        },
    }
    for expected, tune_section in cases.items():
        with pytest.raises(ConfigError) as e:
            Project.load(write_settings(tmp_path, tune_section), environ={})
        assert expected in str(e.value)
    result = run_cli("tune", "--project", str(tmp_path))  # the last case, through the command
    assert result.returncode == 2
    assert "input_window: 96 exceeds features.window" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def small_study(weather_project):  # type: ignore[no-untyped-def]
    """A study of 4 trials (SQLite under .tsops/), shared by the tests that only read it."""
    project = load(weather_project, tiny("parent-children"))
    return project, tune(project, trials=4, show_progress=False)


def test_a_study_is_one_mlflow_parent_run_with_a_child_run_per_trial(weather_project, small_study) -> None:
    project, outcome = small_study

    study = optuna.load_study(study_name="parent-children", storage=project.study_storage)
    assert project.study_storage == f"sqlite:///{weather_project.root / '.tsops' / 'optuna.db'}"
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3] and outcome.trials_run == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    defaults = {"input_window": 8, "hidden_size": 8, "learning_rate": 0.002, "batch_size": 512, "epochs": 2}
    assert trials[0].params == defaults  # a new study starts from the model settings
    parent, children = mlflow_runs(project, "parent-children")
    assert study.user_attrs[PARENT_RUN_ATTR] == parent.info.run_id == outcome.parent_run_id
    assert [int(c.data.tags["tsops.trial"]) for c in children] == [0, 1, 2, 3]
    client = MlflowClient(project.tracking_uri)
    for trial, child in zip(trials, children, strict=True):
        assert child.data.tags["tsops.trial_state"] == trial.state.name
        assert child.info.status == "FINISHED"
        for name, value in trial.params.items():
            assert child.data.params[f"model.{name}"] == str(value)
        history = client.get_metric_history(child.info.run_id, "val_mae")
        assert [m.step for m in history] == sorted(trial.intermediate_values)
        assert [m.value for m in history] == pytest.approx(
            [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        )
        if trial.state == TrialState.COMPLETE:
            assert child.data.metrics["best_val_mae"] == pytest.approx(trial.value)
    best = study.best_trial
    assert parent.data.tags["tsops.best_trial"] == str(best.number)
    assert {k[5:]: v for k, v in parent.data.tags.items() if k.startswith("best.")} == {
        k: str(v) for k, v in best.params.items()
    }
    assert parent.data.metrics["best_val_mae"] == pytest.approx(best.value)
    assert parent.info.status == "FINISHED"


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_ctrl_c_stops_cleanly_and_rerunning_continues_the_same_study(weather_project) -> None:
    env = tiny(
        "resume",
        TSOPS_TUNE__START_FROM_DEFAULTS="false",
        TSOPS_TUNE__PRUNER="none",
        TSOPS_MODEL__PATIENCE="50",
        TSOPS_TUNE__SPACE__EPOCHS="{choices: [8]}",  # long enough to be interrupted mid-trial
        # one base: with model.base auto and two promising bases, epochs are reported only
        # once both networks are trained (docs/tuning.md), so no trial is seen mid-way
        TSOPS_MODEL__BASE="seasonal",
    )
    project = load(weather_project, env)
    storage = project.study_storage
    proc = subprocess.Popen(
        [*TSOPS, "tune", "--trials", "3", "--project", str(project.root)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def running_with_an_epoch() -> bool:
        assert proc.poll() is None, proc.communicate()
        try:
            trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
        except KeyError:
            return False
        return any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)

    _wait_for(running_with_an_epoch, 120, "a trial to report an epoch")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in out and "Traceback" not in err

    first = optuna.load_study(study_name="resume", storage=storage).get_trials()
    assert [t.state for t in first] == [TrialState.FAIL, TrialState.WAITING]
    assert first[0].user_attrs[REASON_ATTR].startswith("interrupted at epoch")

    again = tune(project, trials=1, show_progress=False)  # what a second `tsops tune` runs
    assert again.trials_run == 1 and not again.interrupted
    trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
    assert [t.number for t in trials] == [0, 1]
    assert trials[1].state == TrialState.COMPLETE and trials[1].params == trials[0].params  # retried
    parent, children = mlflow_runs(project, "resume")
    assert [c.info.status for c in children] == ["KILLED", "FINISHED"]


def test_two_workers_share_one_study_on_postgresql(weather_project, postgres_server) -> None:
    url = postgres_server.create_database("optuna_shared")
    env = tiny(
        "shared",
        TSOPS_TUNE__STORAGE=url,
        TSOPS_TUNE__PRUNER="none",
        TSOPS_TUNE__SPACE__EPOCHS="{choices: [1]}",
    )
    result = run_cli(
        "tune", "--trials", "4", "--workers", "2", "--project", str(weather_project.root), env=env
    )
    assert result.returncode == 0, result.stderr

    trials = optuna.load_study(study_name="shared", storage=url).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    parent, children = mlflow_runs(load(weather_project, env), "shared")
    assert [int(c.data.tags["tsops.trial"]) for c in children] == [0, 1, 2, 3]
    assert {c.data.tags["tsops.worker"] for c in children} == {"0", "1"}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}


def test_a_trial_with_a_non_finite_loss_is_recorded_failed_and_the_study_goes_on(weather_project) -> None:
    env = tiny("diverging", TSOPS_TUNE__SAMPLER="grid")
    for name in ("INPUT_WINDOW", "HIDDEN_SIZE", "BATCH_SIZE", "EPOCHS"):
        env[f"TSOPS_TUNE__SPACE__{name}"] = ""
    env["TSOPS_TUNE__SPACE__LEARNING_RATE"] = "{choices: [0.002, 1.0e+35, 1.0e+36]}"  # absurd ones diverge
    project = load(weather_project, env)
    outcome = tune(project, trials=10, show_progress=False)  # the grid ends the study after 3

    trials = optuna.load_study(study_name="diverging", storage=project.study_storage).get_trials()
    assert len(trials) == 3
    by_lr = {t.params["learning_rate"]: t for t in trials}
    assert by_lr[0.002].state == TrialState.COMPLETE
    for lr in (1e35, 1e36):
        assert by_lr[lr].state == TrialState.FAIL
        assert "training diverged at epoch 1 (loss" in by_lr[lr].user_attrs[REASON_ATTR]
    assert sorted(n for n, _ in outcome.failures) == sorted(by_lr[lr].number for lr in (1e35, 1e36))
    _, children = mlflow_runs(project, "diverging")
    for trial, child in zip(trials, children, strict=True):
        failed = trial.state == TrialState.FAIL
        assert child.info.status == ("FAILED" if failed else "FINISHED")
        assert ("training diverged" in child.data.tags.get("tsops.reason", "")) == failed


def test_train_from_study_registers_a_challenger_with_the_best_parameters(small_study) -> None:
    project, _ = small_study
    best = optuna.load_study(study_name="parent-children", storage=project.study_storage).best_trial

    result = run_cli("train", "--from-study", "--project", str(project.root), env=tiny("parent-children"))
    assert result.returncode == 0, result.stderr
    client = MlflowClient(project.tracking_uri, project.tracking_uri)
    version = client.get_model_version_by_alias("weather_tuned", "challenger")
    assert version.tags["tsops.study"] == "parent-children"
    assert version.tags["tsops.study_trial"] == str(best.number)
    params = client.get_run(version.run_id).data.params
    for name, value in best.params.items():
        assert params[f"model.{name}"] == str(value)

    # a window shorter than the ingested one still serves: the served model predicts what
    # the forecaster does from the full feature row
    from tsops.serving.model import load as load_served

    served = load_served(project, int(version.version))
    assert len(served.forecaster.cfg.window_names) == best.params["input_window"] < 48
    store = FeatureStoreClient(project)
    rows = dataset.build(store, 24).test.features[served.columns].head(3)
    expected = served.forecaster.predict(rows)
    assert np.allclose(served.predict_now(rows.to_numpy(dtype=np.float64)), expected, atol=1e-5)
