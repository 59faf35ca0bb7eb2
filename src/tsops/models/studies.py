"""The tuning study in its Optuna storage: opening or creating it (storage, sampler, pruner),
preparing a new one, its counts and its best trial.

The storage is SQLite under `.tsops/` by default or any SQLAlchemy URL (`tune.storage`), e.g.
PostgreSQL, so a rerun continues the study and several processes or machines share it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from tsops.errors import ModelError, StoreError
from tsops.models import search_space
from tsops.models.dataset import TrainingData
from tsops.secrets import redacted, resolve_url
from tsops.settings import Project

PARENT_RUN_ATTR = "tsops.mlflow_parent_run_id"
SESSION_ATTR = "tsops.session"  # which `tsops tune` run a trial belongs to
REASON_ATTR = "fail_reason"
RUN_ATTR = "mlflow_run_id"
DATA_HASH_ATTR = "tsops.data_hash"
OBJECTIVE = "val_mae"


@dataclass
class BestTrial:
    study: str
    number: int
    value: float
    params: dict[str, Any]
    parent_run_id: str | None


def open_study(project: Project, *, worker: int = 0, create: bool = True) -> optuna.Study:
    """The project's study (created on first use); worker i's sampler uses seed + i."""
    tune = project.settings.tune
    url = project.study_storage
    sqlite = url.startswith("sqlite")
    if sqlite:
        project.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                resolve_url(url, "tune.storage"),
                # concurrent workers on one SQLite file wait for the lock instead of failing
                engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True},
                heartbeat_interval=60,  # a worker that dies leaves no trial RUNNING for ever
                grace_period=180,
            )
    except Exception as e:  # bad URL, missing driver, unreachable server
        raise StoreError(f"cannot open the study storage {redacted(url)}: {e}", "tune.storage") from None
    if not create:
        try:
            return optuna.load_study(study_name=project.study_name, storage=storage)
        except KeyError:
            raise ModelError(
                f"no study {project.study_name!r} in {redacted(url)}; run tsops tune first", "tune.study"
            ) from None
    seed = None if tune.seed is None else tune.seed + worker
    specs = search_space.resolve(tune.space, project.settings.features.window)
    sampler: optuna.samplers.BaseSampler
    if tune.sampler == "grid":
        sampler = optuna.samplers.GridSampler(search_space.grid(specs), seed=seed)
    elif tune.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
        )
        if tune.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        study_name=project.study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )


def best_of_study(project: Project) -> BestTrial:
    """The study's best complete trial (for `tsops train --from-study`)."""
    quiet_optuna()
    study = open_study(project, create=False)
    try:
        best = study.best_trial
    except ValueError:
        raise ModelError(
            f"study {study.study_name!r} has no complete trial yet; run tsops tune", "tune.study"
        ) from None
    assert best.value is not None
    return BestTrial(
        study.study_name, best.number, best.value, dict(best.params), study.user_attrs.get(PARENT_RUN_ATTR)
    )


def prepare(project: Project, study: optuna.Study, data: TrainingData, feature_hash: str) -> list[str]:
    """A new study records its data and starts from the current settings; a resumed one
    says when the data changed since."""
    settings = project.settings
    if not study.trials:
        study.set_user_attr(DATA_HASH_ATTR, data.data_hash)
        study.set_user_attr("tsops.feature_hash", feature_hash)
        if settings.tune.start_from_defaults and settings.tune.sampler != "grid":
            specs = search_space.resolve(settings.tune.space, settings.features.window)
            defaults = search_space.defaults_in_space(settings, specs)
            if defaults:
                study.enqueue_trial(defaults, user_attrs={"tsops.defaults": True})
        return []
    before = study.user_attrs.get(DATA_HASH_ATTR)
    if before and before != data.data_hash:
        return [
            f"the data changed since this study began (hash {before} → {data.data_hash}); earlier "
            "trials were scored on other data. Set tune.study to a new name to start afresh."
        ]
    return []


@dataclass
class Summary:
    finished: int
    complete: int
    pruned: int
    failed: int
    session_finished: int
    session_failures: list[tuple[int, str]]
    best: BestTrial | None


def summary(study: optuna.Study, session: str) -> Summary:
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    mine = [t for t in trials if t.state.is_finished() and t.user_attrs.get(SESSION_ATTR) == session]
    complete = [t for t in by_state[TrialState.COMPLETE] if t.value is not None]
    top = min(complete, key=lambda t: (t.value, t.number)) if complete else None
    best = (
        BestTrial(study.study_name, top.number, float(top.value), dict(top.params), None)
        if top is not None and top.value is not None
        else None
    )
    return Summary(
        finished=sum(1 for t in trials if t.state.is_finished()),
        complete=len(complete),
        pruned=len(by_state[TrialState.PRUNED]),
        failed=len(by_state[TrialState.FAIL]),
        session_finished=len(mine),
        session_failures=[
            (t.number, str(t.user_attrs.get(REASON_ATTR, "failed")))
            for t in mine
            if t.state == TrialState.FAIL
        ],
        best=best,
    )


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress and summary say it all
