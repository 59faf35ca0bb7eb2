"""Tuning benchmark: `tsops tune` against the default parameters, and how a study scales with
worker processes, in one run.

    .venv/bin/python benchmarks/tuning.py [--project DIR] [--budget 240] [--scaling-budget 90]
                                          [--threads 1]

1. Quality under one wall-clock budget. What a user would otherwise do: `tsops train` with
   the default parameters. Against it: `tsops tune --timeout BUDGET` (default search space,
   TPE, median pruner; the first trial is the defaults), then `tsops train --from-study`.
   Prints the validation MAE (the objective: validation origins, never the held-out tail)
   and the backtest MAE on the held-out tail (what the gate compares) of both, and the ratios.
2. Scaling. The same fixed-cost study (3 epochs, no pruning, small networks) for
   `--scaling-budget` seconds with 1 worker x 1 thread, 1 worker x 2 threads and 2 workers x
   1 thread: trials completed per minute (wall clock of the whole `tsops tune`, start-up and
   data loading included), trial-duration percentiles, and the ratios.

Every arm is a `tsops` command in its own process on the same project (the weather example,
created and ingested in a temporary folder unless `--project` is given), each in its own
study and MLflow experiment. `--threads` sets `model.threads` for the quality arms (1 keeps a
shared machine's contention out of the comparison).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from tsops.settings import Project

TSOPS = [sys.executable, "-m", "tsops"]
SCALING_SPACE = {
    "TSOPS_TUNE__PRUNER": "none",
    "TSOPS_TUNE__START_FROM_DEFAULTS": "false",
    "TSOPS_TUNE__SPACE__INPUT_WINDOW": "{choices: [24]}",
    "TSOPS_TUNE__SPACE__HIDDEN_SIZE": "{low: 16, high: 32}",
    "TSOPS_TUNE__SPACE__NUM_LAYERS": "",
    "TSOPS_TUNE__SPACE__DROPOUT": "",
    "TSOPS_TUNE__SPACE__BATCH_SIZE": "{choices: [256]}",
    "TSOPS_TUNE__SPACE__EPOCHS": "{choices: [3]}",
    "TSOPS_MODEL__PATIENCE": "10",
}


def tsops(project: Path, env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [*TSOPS, *args, "--project", str(project)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"tsops {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def prepare(folder: Path) -> Path:
    from tsops.features.ingest import ingest
    from tsops.scaffold import init_example

    project = init_example(folder / "proj", "weather")
    ingest(project, quiet=True)
    return project.root


def last_training(project: Path, env: dict[str, str]) -> dict[str, float]:
    """Validation and backtest MAE of the newest training run in the arm's experiment."""
    settings = Project.load(project, environ=env)
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    assert experiment is not None
    run = client.search_runs(
        [experiment.experiment_id],
        "attributes.run_name LIKE 'train%'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    val = [m.value for m in client.get_metric_history(run.info.run_id, "val_mae")]
    return {
        "val_mae": min(val),
        "backtest_mae": run.data.metrics["lstm_mae"],
        "seasonal_naive_mae": run.data.metrics["seasonal_naive_mae"],
        "epochs": len(val),
    }


def study_trials(project: Path, env: dict[str, str]) -> list[optuna.trial.FrozenTrial]:
    settings = Project.load(project, environ=env)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=settings.study_name, storage=settings.study_storage)
    return study.get_trials()


def quality(project: Path, budget: float, threads: int, tag: str) -> None:
    base = {"TSOPS_MODEL__THREADS": str(threads)}
    default_env = {**base, "TSOPS_TRACKING__EXPERIMENT": f"bench-default-{tag}"}
    default_s = tsops(project, default_env, "train")
    default = last_training(project, default_env)

    tune_env = {
        **base,
        "TSOPS_TRACKING__EXPERIMENT": f"bench-tune-{tag}",
        "TSOPS_TUNE__STUDY": f"bench-quality-{tag}",
        "TSOPS_MODEL__NAME": "weather_tuned",
    }
    tune_s = tsops(project, tune_env, "tune", "--trials", "10000", "--timeout", str(budget))
    trials = study_trials(project, tune_env)
    final_s = tsops(project, tune_env, "train", "--from-study")
    tuned = last_training(project, tune_env)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value or np.inf)

    print(f"\n## Quality: default parameters vs tsops tune --timeout {budget:.0f} (model.threads {threads})")
    print(
        f"tune: {tune_s:.0f} s wall, {len(trials)} trials ({states['COMPLETE']} complete, "
        f"{states['PRUNED']} pruned, {states['FAIL']} failed); best trial #{best.number}: {best.params}"
    )
    print("| model | wall s | epochs | validation MAE | backtest MAE (held-out tail) |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| default parameters (`tsops train`) | {default_s:.0f} | {default['epochs']:.0f} | "
        f"{default['val_mae']:.4f} | {default['backtest_mae']:.4f} |"
    )
    print(
        f"| best of the study (`tsops train --from-study`) | {tune_s:.0f} + {final_s:.0f} | "
        f"{tuned['epochs']:.0f} | {tuned['val_mae']:.4f} | {tuned['backtest_mae']:.4f} |"
    )
    print(f"| seasonal naive (reference) | | | | {default['seasonal_naive_mae']:.4f} |")
    print(
        f"ratio tuned / default: validation MAE {tuned['val_mae'] / default['val_mae']:.3f}, "
        f"backtest MAE {tuned['backtest_mae'] / default['backtest_mae']:.3f}"
    )


def scaling(project: Path, budget: float, tag: str) -> None:
    arms = [("1 worker x 1 thread", 1, 1), ("1 worker x 2 threads", 1, 2), ("2 workers x 1 thread", 2, 2)]
    rates = {}
    print(f"\n## Scaling: a fixed-cost study for {budget:.0f} s (`tsops tune --timeout {budget:.0f}`)")
    print("| arm | wall s | trials finished | trials/min (wall) | trials/min (trial span) | p50 s | p95 s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, workers, threads in arms:
        env = {
            **SCALING_SPACE,
            "TSOPS_MODEL__THREADS": str(threads),  # split over the workers: 2 // 2 = 1 each
            "TSOPS_TRACKING__EXPERIMENT": f"bench-scaling-{tag}",
            "TSOPS_TUNE__STUDY": f"bench-scaling-{tag}-{workers}w{threads}t",
            "TSOPS_TUNE__SEED": "0",
        }
        wall = tsops(
            project, env, "tune", "--trials", "10000", "--timeout", str(budget), "--workers", str(workers)
        )
        trials = [t for t in study_trials(project, env) if t.state.is_finished()]
        seconds = np.array(
            [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]  # type: ignore[operator]
        )
        rates[name] = len(trials) / (wall / 60)
        if trials:  # from the first trial's start to the last one's end: start-up left out
            span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)  # type: ignore[type-var]
            span_rate = len(trials) / (span.total_seconds() / 60)
            p50, p95 = np.percentile(seconds, [50, 95])
        else:
            span_rate, p50, p95 = 0.0, np.nan, np.nan
        print(
            f"| {name} | {wall:.0f} | {len(trials)} | {rates[name]:.2f} | {span_rate:.2f} | "
            f"{p50:.1f} | {p95:.1f} |"
        )
    base = rates["1 worker x 1 thread"] or np.nan
    print(
        "ratio trials/min: 2 workers / 1 worker (1 thread each) "
        f"{rates['2 workers x 1 thread'] / base:.2f}; 1 worker x 2 threads / 1 worker x 1 thread "
        f"{rates['1 worker x 2 threads'] / base:.2f}; 2 workers / 1 worker x 2 threads "
        f"{rates['2 workers x 1 thread'] / (rates['1 worker x 2 threads'] or np.nan):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", type=Path, help="an ingested weather project (default: a fresh one)")
    parser.add_argument("--budget", type=float, default=240.0, help="tune's wall-clock budget, seconds")
    parser.add_argument("--scaling-budget", type=float, default=90.0, help="per scaling arm, seconds")
    parser.add_argument("--threads", type=int, default=1, help="model.threads for the quality arms")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    tag = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="tsops-tune-bench-") as tmp:
        project = args.project.resolve() if args.project else prepare(Path(tmp))
        print(f"project {project}; {os.cpu_count()} CPUs; load average {os.getloadavg()}")
        if not args.skip_quality:
            quality(project, args.budget, args.threads, tag)
        if not args.skip_scaling:
            scaling(project, args.scaling_budget, tag)
        print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
