"""`tsops tune`: run trials of the project's Optuna study (`studies.py`), in this process or
in K worker processes sharing the study.

Each trial trains on the training origins and is scored on the validation origins (the
minimum per-epoch validation MAE: the epoch whose weights early stopping keeps); the held-out
tail stays for the final backtest and the promotion gate. The per-epoch validation MAE feeds
the pruner.

Tracking: one MLflow parent run per study (its id is kept in the study), one child run per
trial with the trial's parameters, per-epoch loss and validation MAE, and its state. The best
trial's parameters are tags on the parent run. A trial that fails (a non-finite loss, any
error) is recorded as failed with the reason, and the study goes on.

Stopping: `stop` (Ctrl-C in the CLI) ends the running trials at their next epoch. They are
recorded as failed ("interrupted") and enqueued again, so the next `tsops tune` retries them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from optuna.trial import FrozenTrial, TrialState
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

from tsops import registry
from tsops.console import progress as progress_display
from tsops.errors import ModelError, TsopsError
from tsops.features.definitions import FeatureSet
from tsops.features.store import FeatureStoreClient
from tsops.models import dataset, search_space, studies, training
from tsops.models.dataset import TrainingData
from tsops.secrets import redacted
from tsops.settings import Project


class TrialInterrupted(Exception):
    """The user stopped the study while this trial was training."""


@dataclass
class TuneOutcome:
    study: str
    storage: str  # password hidden
    parent_run_id: str
    trials_run: int  # finished by this `tsops tune`
    complete: int  # in the whole study
    pruned: int
    failed: int
    best: studies.BestTrial | None
    failures: list[tuple[int, str]] = field(default_factory=list)  # this run: trial, reason
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def tune(
    project: Project,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    workers: int | None = None,
    stop: threading.Event | None = None,
    show_progress: bool = True,
) -> TuneOutcome:
    """Run `trials` more trials of the project's study (split over `workers` processes), or
    fewer when `stop` is set or `timeout` seconds have passed since the training data was
    loaded (no trial starts after that; running ones finish, as Optuna's timeout)."""
    started = time.perf_counter()
    settings = project.settings
    trials = trials or settings.tune.trials
    workers = min(workers or settings.tune.workers, trials)
    timeout = timeout if timeout is not None else settings.tune.timeout_s
    stop = stop or threading.Event()
    studies.quiet_optuna()
    client = registry.connect(project)
    study = studies.open_study(project)
    store = FeatureStoreClient(project)
    data = dataset.build(store, settings.model.horizon)
    notes = studies.prepare(project, study, data, store.features.definition_hash())
    parent_run_id = _parent_run(client, project, study)
    session = uuid.uuid4().hex[:12]
    threads = max(1, settings.model.threads // workers)
    quotas = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]
    deadline = None if timeout is None else time.time() + timeout  # worker start-up included
    try:
        with _TrialProgress(project.study_name, trials, show_progress) as show:

            def refresh(_: object = None) -> None:
                show(studies.summary(study, session))

            refresh()
            if workers == 1:
                _work(
                    study,
                    project,
                    data,
                    quota=trials,
                    deadline=deadline,
                    parent_run_id=parent_run_id,
                    session=session,
                    threads=threads,
                    stop=stop.is_set,
                    after_trial=refresh,
                )
            else:
                _run_workers(project, data, quotas, deadline, parent_run_id, session, threads, stop, refresh)
            refresh()
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise
    interrupted = stop.is_set()
    summary = studies.summary(study, session)
    _record_best(client, parent_run_id, study)
    client.log_batch(
        parent_run_id,
        metrics=[
            Metric(f"trials_{k}", float(v), _now(), summary.finished)
            for k, v in (
                ("complete", summary.complete),
                ("pruned", summary.pruned),
                ("failed", summary.failed),
            )
        ],
    )
    client.set_terminated(parent_run_id, "KILLED" if interrupted else "FINISHED")
    return TuneOutcome(
        study=study.study_name,
        storage=redacted(project.study_storage),
        parent_run_id=parent_run_id,
        trials_run=summary.session_finished,
        complete=summary.complete,
        pruned=summary.pruned,
        failed=summary.failed,
        best=replace(summary.best, parent_run_id=parent_run_id) if summary.best else None,
        failures=summary.session_failures,
        interrupted=interrupted,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


# --- one worker: the objective and its MLflow child runs ------------------------------------


def _work(
    study: optuna.Study,
    project: Project,
    data: TrainingData,
    *,
    quota: int,
    deadline: float | None,
    parent_run_id: str,
    session: str,
    threads: int,
    stop: Callable[[], bool],
    worker: int = 0,
    after_trial: Callable[[FrozenTrial], None] | None = None,
) -> None:
    settings = project.settings
    features = FeatureSet(settings.features)
    specs = search_space.resolve(settings.tune.space, settings.features.window)
    client = registry.connect(project)
    experiment = client.get_experiment_by_name(project.experiment)
    assert experiment is not None
    retry_interrupted = settings.tune.sampler != "grid"  # the grid sampler revisits on its own

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(studies.SESSION_ATTR, session)
        params = search_space.suggest(trial, specs)
        run = client.create_run(
            experiment.experiment_id,
            tags={
                MLFLOW_PARENT_RUN_ID: parent_run_id,
                MLFLOW_RUN_NAME: f"trial-{trial.number}",
                "tsops.study": study.study_name,
                "tsops.trial": str(trial.number),
                "tsops.worker": str(worker),
            },
        )
        run_id = run.info.run_id
        trial.set_user_attr(studies.RUN_ATTR, run_id)
        started = time.perf_counter()
        try:
            tuned = search_space.apply(settings, params, f"trial {trial.number}")
            model = tuned.model.model_copy(update={"threads": threads})
            client.log_batch(
                run_id,
                params=[Param(f"model.{k}", str(v)) for k, v in tuned.model.model_dump().items()]
                + [Param("trial", str(trial.number))],
            )

            def on_epoch(epoch: int, loss: float, val_mae: float) -> None:
                client.log_batch(
                    run_id,
                    metrics=[
                        Metric("train_loss", loss, _now(), epoch),
                        Metric(studies.OBJECTIVE, val_mae, _now(), epoch),
                    ],
                )
                if stop():
                    raise TrialInterrupted(f"interrupted at epoch {epoch}")
                trial.report(val_mae, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (validation MAE {val_mae:.4g})")

            result = training.fit(data, features, model, on_epoch=on_epoch, show_progress=False)
        except optuna.TrialPruned as e:
            _end_run(client, run_id, TrialState.PRUNED, "FINISHED", started, str(e))
            raise
        except TrialInterrupted as e:
            trial.set_user_attr(studies.REASON_ATTR, str(e))
            _end_run(client, run_id, TrialState.FAIL, "KILLED", started, str(e))
            if retry_interrupted:
                study.enqueue_trial(params, user_attrs={"tsops.retry_of": trial.number})
            study.stop()
            raise
        except Exception as e:  # a non-finite loss, a bad setting, anything: the study goes on
            reason = str(e) or type(e).__name__
            trial.set_user_attr(studies.REASON_ATTR, reason)
            _end_run(client, run_id, TrialState.FAIL, "FAILED", started, reason)
            raise
        value = result.best_val_mae  # of the model training returns (an ensemble's, not a member's)
        client.log_batch(
            run_id,
            metrics=[
                Metric(f"best_{studies.OBJECTIVE}", value, _now(), 0),
                Metric("epochs_run", float(result.epochs_run), _now(), 0),
                Metric("best_epoch", float(result.best_epoch), _now(), 0),
            ],
        )
        _end_run(client, run_id, TrialState.COMPLETE, "FINISHED", started)
        return value

    def between_trials(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            _record_best(client, parent_run_id, study, only_if_best=trial.number)
        if after_trial:
            after_trial(trial)
        if stop():
            study.stop()

    timeout = None if deadline is None else deadline - time.time()
    if stop() or (timeout is not None and timeout <= 0):
        return
    study.optimize(objective, n_trials=quota, timeout=timeout, catch=(Exception,), callbacks=[between_trials])


def _end_run(
    client: MlflowClient, run_id: str, state: TrialState, status: str, started: float, reason: str = ""
) -> None:
    tags = [RunTag("tsops.trial_state", state.name)]
    if reason:
        tags.append(RunTag("tsops.reason", reason[:5000]))
    client.log_batch(run_id, metrics=[Metric("seconds", time.perf_counter() - started, _now(), 0)], tags=tags)
    client.set_terminated(run_id, status)


# --- several worker processes ---------------------------------------------------------------


def _worker_main(
    project: Project,
    data: TrainingData,
    index: int,
    quota: int,
    deadline: float | None,
    parent_run_id: str,
    session: str,
    threads: int,
    stop: Any,  # a multiprocessing Event
    parent_pid: int,
) -> None:
    """A spawned worker: SIGINT is ignored (inherited); the coordinator sets `stop`."""
    warnings.filterwarnings("ignore")
    studies.quiet_optuna()
    try:
        study = studies.open_study(project, worker=index)
        _work(
            study,
            project,
            data,
            quota=quota,
            deadline=deadline,
            parent_run_id=parent_run_id,
            session=session,
            threads=threads,
            stop=lambda: stop.is_set() or os.getppid() != parent_pid,
            worker=index,
        )
    except TsopsError as e:
        print(f"tune worker {index}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _run_workers(
    project: Project,
    data: TrainingData,
    quotas: list[int],
    deadline: float | None,
    parent_run_id: str,
    session: str,
    threads: int,
    stop: threading.Event,
    refresh: Callable[[], None],
) -> None:
    ctx = multiprocessing.get_context("spawn")
    stop_workers = ctx.Event()
    procs = []
    in_main = threading.current_thread() is threading.main_thread()
    # Workers inherit an ignored SIGINT, so Ctrl-C reaches only the coordinator, which then
    # stops them at their next epoch through `stop_workers`.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        for index, quota in enumerate(quotas):
            args = (project, data, index, quota, deadline, parent_run_id, session, threads)
            proc = ctx.Process(
                target=_worker_main, args=(*args, stop_workers, os.getpid()), name=f"tsops-tune-{index}"
            )
            proc.start()
            procs.append(proc)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    try:
        while any(p.is_alive() for p in procs):
            if stop.is_set():
                stop_workers.set()
            for p in procs:
                p.join(timeout=1.0 / len(procs))
            refresh()
    except KeyboardInterrupt:  # without a CLI handler: stop the workers, then re-raise
        stop_workers.set()
        for p in procs:
            p.join()
        raise
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if failed and not stop.is_set():
        raise ModelError(f"tuning worker(s) exited with an error: {failed}", "tune.workers")


# --- the study's bookkeeping: parent run, best trial, progress ------------------------------


def _parent_run(client: MlflowClient, project: Project, study: optuna.Study) -> str:
    """The study's MLflow parent run: created with the study, reopened on every resume."""
    tune = project.settings.tune
    tags = {
        "tsops.sampler": tune.sampler,
        "tsops.pruner": tune.pruner,
        "tsops.space": json.dumps(
            {k: v.model_dump(exclude_defaults=True) for k, v in tune.space.tuned().items()}
        ),
    }
    run_id = study.user_attrs.get(studies.PARENT_RUN_ATTR)
    if run_id:
        try:
            if client.get_run(run_id).info.lifecycle_stage == "active":
                client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
                return str(run_id)
        except MlflowException:
            pass  # deleted, or another tracking store: start a new parent run here
    experiment = client.get_experiment_by_name(project.experiment)
    assert experiment is not None
    run = client.create_run(
        experiment.experiment_id,
        tags={MLFLOW_RUN_NAME: f"tune-{study.study_name}", "tsops.study": study.study_name, **tags},
    )
    storage = redacted(project.study_storage)
    client.log_batch(
        run.info.run_id,
        params=[
            Param("study", study.study_name),
            Param("storage", storage),
            Param("objective", f"minimize {studies.OBJECTIVE}"),
        ],
    )
    study.set_user_attr(studies.PARENT_RUN_ATTR, run.info.run_id)
    return str(run.info.run_id)


def _record_best(
    client: MlflowClient, parent_run_id: str, study: optuna.Study, only_if_best: int | None = None
) -> None:
    """Store the best trial's parameters on the parent run (tags `best.<param>`, a JSON file
    and the `best_val_mae` metric, whose history shows each improvement by trial number)."""
    try:
        best = study.best_trial
    except ValueError:
        return
    if only_if_best is not None and best.number != only_if_best:
        return
    assert best.value is not None
    client.log_batch(
        parent_run_id,
        metrics=[Metric(f"best_{studies.OBJECTIVE}", best.value, _now(), best.number)],
        tags=[
            RunTag("tsops.best_trial", str(best.number)),
            *(RunTag(f"best.{k}", str(v)) for k, v in best.params.items()),
        ],
    )
    client.log_text(
        parent_run_id,
        json.dumps({"trial": best.number, studies.OBJECTIVE: best.value, "params": best.params}, indent=1),
        "best_params.json",
    )


class _TrialProgress:
    """Rich progress of this run's trials, with the study's pruned/failed counts and best."""

    def __init__(self, study: str, total: int, enabled: bool):
        self.total = total
        self.bar = progress_display(
            TextColumn(f"tuning {study}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} trials"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            show=enabled,
        )
        self.task = self.bar.add_task("tune", total=total, info="")

    def __enter__(self) -> Callable[[studies.Summary], None]:
        self.bar.__enter__()
        return self.show

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)  # type: ignore[arg-type]

    def show(self, s: studies.Summary) -> None:
        best = f"best {s.best.value:.4f} (#{s.best.number})" if s.best else "best -"
        info = f"study: {s.finished} done, {s.pruned} pruned, {s.failed} failed, {best}"
        self.bar.update(self.task, completed=min(s.session_finished, self.total), info=info)


def _now() -> int:
    return int(time.time() * 1000)
