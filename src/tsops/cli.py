"""The `tsops` command: parses arguments, then calls the packages. Errors the user can fix
(`TsopsError`) print one clear message and exit with code 2, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tsops.errors import TsopsError, disk_full

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Time-series forecasting from history to live predictions.",
)
console = Console(soft_wrap=True)  # piped output: one line per result, not wrapped at 80
err_console = Console(stderr=True, soft_wrap=True)  # one unbroken line per error, greppable

ProjectOpt = Annotated[
    Path,
    typer.Option("--project", "-p", help="project folder (tsops.yaml)", envvar="TSOPS_PROJECT_DIR"),
]


def _quiet_libraries() -> None:
    """Third-party warnings and chatter stay hidden unless `--verbose` / TSOPS_VERBOSE=1."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore")
    # Libraries re-enable their own warnings inside `catch_warnings` (MLflow shows its
    # type-hint warning "once" that way): drop them where they would be shown instead.
    warnings.showwarning = lambda *args, **kwargs: None
    for name in ("feast", "mlflow", "alembic", "urllib3", "ibis", "py4j", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _own_log_lines() -> None:
    # tsops' own warnings (e.g. a role waiting for a service at start) go to stderr, one line
    # each, whatever handlers the libraries installed on the root logger.
    own = logging.getLogger("tsops")
    if not own.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        own.addHandler(handler)
        own.setLevel(logging.WARNING)
        own.propagate = False


def _take_verbose_flag(argv: list[str]) -> bool:
    """`--verbose` anywhere before `--` (so `tsops train --verbose` works too); removed from
    argv and passed on as TSOPS_VERBOSE=1, which worker processes inherit."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = [i for i in range(1, end) if argv[i] == "--verbose"]
    for i in reversed(found):
        del argv[i]
    return bool(found)


def _show_version(value: bool) -> None:
    if value:
        from tsops import __version__

        print(f"tsops {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit"),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", help="also show third-party warnings and output (any position)"),
    ] = False,
) -> None:
    """Time-series forecasting from history to live predictions."""


def _load(project: Path, role: str | None = None, *, kafka: bool = False):  # type: ignore[no-untyped-def]
    """The project's settings; for a `role`, after the network services it needs answer."""
    from tsops.settings import Project

    loaded = Project.load(project)
    from tsops.leftovers import remove_stale_tmp_files

    remove_stale_tmp_files(loaded.state_dir)  # of a process killed without a chance to clean up
    from tsops.relocation import follow_a_move

    follow_a_move(loaded)  # a copied project must not read or write the original's files
    if role is not None:
        from tsops import services

        startup = loaded.settings.startup
        services.wait_for(services.needed(loaded, role, kafka=kafka), startup.wait_s, startup.retry_every_s)
    return loaded


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="folder to create the project in")],
    example: Annotated[str | None, typer.Option(help="weather | synthetic")] = None,
    data: Annotated[Path | None, typer.Option(help="your CSV or Parquet history")] = None,
    time: Annotated[str | None, typer.Option(help="time column of --data")] = None,
    target: Annotated[str | None, typer.Option(help="target column of --data")] = None,
    entity: Annotated[str | None, typer.Option(help="entity column (omit for one series)")] = None,
    freq: Annotated[str | None, typer.Option(help="interval such as 1h (inferred if omitted)")] = None,
    entities: Annotated[int, typer.Option(help="synthetic example: number of entities")] = 50,
    seed: Annotated[int, typer.Option(help="synthetic example: random seed")] = 42,
    season: Annotated[
        str | None, typer.Option(help="--data: seasonal period(s) in steps, main first, e.g. 24,168")
    ] = None,
    horizon: Annotated[int | None, typer.Option(min=1, help="--data: steps to forecast")] = None,
    window: Annotated[int | None, typer.Option(min=2, help="--data: feature window in steps")] = None,
    holdout: Annotated[int | None, typer.Option(min=1, help="--data: backtest steps held out")] = None,
) -> None:
    """Write a ready project: an example, or one for your own data."""
    from tsops import scaffold
    from tsops.errors import ConfigError
    from tsops.features.store import FeatureStoreClient

    if (example is None) == (data is None):
        raise ConfigError("give exactly one of --example NAME or --data FILE", "tsops init")

    def show(defaults: scaffold.FrequencyDefaults) -> None:
        console.print(f"defaults for {defaults.freq} data (override any in tsops.yaml):", highlight=False)
        for line in defaults.lines():
            console.print(f"  {line}", highlight=False, soft_wrap=True)

    if data is not None:
        if not time or not target:
            raise ConfigError("--data needs --time COL and --target COL", "tsops init")
        try:
            seasons = [float(s) for s in season.split(",")] if season else None
        except ValueError:
            raise ConfigError(f"not a list of periods: {season!r}", "--season") from None
        project = scaffold.init_from_data(
            directory,
            data,
            time=time,
            target=target,
            entity=entity,
            freq=freq,
            season=seasons,
            horizon=horizon,
            window=window,
            holdout=holdout,
            on_defaults=show,
        )
    else:
        assert example is not None
        project = scaffold.init_example(directory, example, entities=entities, seed=seed, on_defaults=show)
    FeatureStoreClient(project).apply()
    console.print(f"[green]project written[/] to {project.root} (tsops.yaml, feature_repo/)")
    console.print(f"next: tsops ingest --project {directory}")


@app.command()
def ingest(
    project: ProjectOpt = Path("."),
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="rebuild the stores from the file alone, dropping what the stream added (listed)",
        ),
    ] = False,
) -> None:
    """Load history into the offline store and materialize the online store; observations
    the stream added since are kept (merged by entity and time) unless --replace."""
    from tsops.features.ingest import ingest as run

    result = run(_load(project, "ingest"), replace=replace)
    c = result.cleaning
    console.print(
        f"ingested {c.rows_read} rows → {result.offline_rows} regular rows for {len(result.entities)} "
        f"entities; duplicates {c.duplicates}, gaps filled {c.gaps}, missing values filled "
        f"{c.missing_values}, realigned {c.realigned}; online rows {result.online_rows}"
    )
    m = result.merge
    if m.kept:
        console.print(
            f"kept {m.kept} observation(s) the offline store has and the file does not (the "
            "stream's); tsops ingest --replace would drop them",
            highlight=False,
        )
    if m.conflicts:
        console.print(
            f"[yellow]{m.conflicts} observation(s)[/] differ between the file and the offline store: "
            f"took the {m.winner}'s value (data.conflicts: {m.winner})",
            highlight=False,
        )
    if m.dropped:
        names = escape(", ".join(m.dropped_entities[:10]) + (" …" if len(m.dropped_entities) > 10 else ""))
        console.print(
            f"[yellow]--replace dropped {m.dropped} observation(s)[/] the file does not have, of "
            f"{len(m.dropped_entities)} entit{'y' if len(m.dropped_entities) == 1 else 'ies'} "
            f"({names}); their state is back at the file's last time (cleared for those the "
            "file does not have)",
            highlight=False,
        )


@app.command()
def train(
    project: ProjectOpt = Path("."),
    quick: Annotated[bool, typer.Option(help="few epochs, for a first look")] = False,
    from_study: Annotated[
        bool, typer.Option("--from-study", help="with the best parameters of the tuning study")
    ] = False,
) -> None:
    """Backtest baselines and the LSTM, log to MLflow, register, alias `challenger`."""
    from tsops.errors import ConfigError
    from tsops.models.pipeline import train as run

    loaded = _load(project, "train")
    if from_study:
        from tsops.models.studies import best_of_study

        if quick:
            raise ConfigError("--from-study trains with the study's epochs; drop --quick", "--quick")
        best = best_of_study(loaded)
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        console.print(f"study {best.study}: best trial #{best.number} (val MAE {best.value:.4f}): {params}")
        lineage = {
            "tsops.study": best.study,
            "tsops.study_trial": str(best.number),
            **({"tsops.study_parent_run": best.parent_run_id} if best.parent_run_id else {}),
        }
        outcome = run(loaded, params=best.params, lineage=lineage)
    else:
        outcome = run(loaded, quick=quick)
    from tsops.status import spread_note

    report = outcome.report
    best_baseline, best_mae = report.best_baseline()
    table = Table(title=f"Backtest on the held-out tail ({report.origins} origins)")
    for col in ("model", "MAE", "RMSE", "MASE", f"MAE / {best_baseline}", "fit s"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in sorted(report.overall.items(), key=lambda kv: kv[1]["mae"]):
        seconds = outcome.lstm_seconds if name == "lstm" else report.fit_seconds.get(name)
        table.add_row(
            name,
            f"{m['mae']:.4f}",
            f"{m['rmse']:.4f}",
            f"{m['mase']:.4f}",
            f"{report.ratio_to_best_baseline(name):.3f}",
            f"{seconds:.1f}" if seconds is not None else "",
        )
    console.print(table)
    ratio = report.ratio_to_best_baseline("lstm")
    verdict = "beats" if ratio < 1 else "does [bold red]not[/] beat"
    console.print(
        f"the LSTM {verdict} the best baseline ({best_baseline}, MAE {best_mae:.4f}): ratio {ratio:.3f}"
        + spread_note(report.ratio_interval("lstm"), report.stretches if report.origins > 1 else None),
        highlight=False,
    )
    console.print(
        f"the network corrects {outcome.base}: MAE {outcome.base_mae:.4f} alone, "
        f"{report.overall['lstm']['mae']:.4f} corrected",
        highlight=False,
    )
    if report.fit_seconds:
        console.print(
            f"statistical baselines: {sum(report.fit_seconds.values()):.1f} s of fits took "
            f"{outcome.baselines_seconds:.1f} s (processes: {outcome.baseline_processes})",
            highlight=False,
        )
    for failure in report.failures:
        console.print(f"[yellow]baseline:[/] {failure}", highlight=False)
    _print_left_out(outcome.left_out)
    console.print(
        f"registered version {outcome.version} as [bold]challenger[/] "
        f"(run {outcome.run_id}, {outcome.epochs_run} epochs, {outcome.seconds:.1f} s)"
    )


def _print_left_out(left_out: dict[str, str], limit: int = 10) -> None:
    if not left_out:
        return
    console.print(
        f"[yellow]left out {len(left_out)} entit{'y' if len(left_out) == 1 else 'ies'}[/] "
        "with too little or unusable history (not trained on, not backtested):",
        highlight=False,
    )
    for entity, reason in list(left_out.items())[:limit]:
        console.print(f"  - {entity}: {reason}", highlight=False, markup=False)
    if len(left_out) > limit:
        console.print(f"  … and {len(left_out) - limit} more (tsops status --json lists them)")
    console.print("  a mistyped one? remove it with: tsops entities drop NAME", highlight=False)


@app.command()
def tune(
    project: ProjectOpt = Path("."),
    trials: Annotated[int | None, typer.Option(min=1, help="trials to run (default: tune.trials)")] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0.0, help="start no trial after this many seconds")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="processes sharing the study (default: tune.workers)")
    ] = None,
) -> None:
    """Search the forecaster's hyperparameters (Optuna); every trial an MLflow child run."""
    from tsops.models.tuning import tune as run
    from tsops.stopping import stop_on_signals

    with stop_on_signals() as stop:  # Ctrl-C / SIGTERM: running trials end at their next epoch
        out = run(_load(project, "tune"), trials=trials, timeout=timeout, workers=workers, stop=stop)
    for note in out.notes:
        console.print(f"[yellow]note:[/] {note}")
    for number, reason in out.failures:
        console.print(f"[red]trial {number} failed:[/] {reason}", highlight=False)
    console.print(
        f"study {out.study} ({out.storage}): {out.trials_run} trial(s) this run in {out.seconds:.0f} s; "
        f"study total {out.complete} complete, {out.pruned} pruned, {out.failed} failed; "
        f"MLflow parent run {out.parent_run_id}"
    )
    if out.best:
        params = ", ".join(f"{k}={v}" for k, v in out.best.params.items())
        console.print(f"best trial #{out.best.number}: validation MAE {out.best.value:.4f} ({params})")
        console.print("next: tsops train --from-study")
    if out.interrupted:
        console.print("[yellow]interrupted[/]: run tsops tune again to continue the study")
        raise typer.Exit(130)


@app.command()
def promote(
    project: ProjectOpt = Path("."),
    version: Annotated[int | None, typer.Option(help="version to promote (default: challenger)")] = None,
    force: Annotated[bool, typer.Option(help="skip the gate (recorded as an audit tag)")] = False,
) -> None:
    """Move `champion` to the challenger if it beats the champion on the same backtest window."""
    from tsops.lifecycle.promotion import promote as run

    d = run(_load(project, "promote"), version, force=force)
    colour = "green" if d.promoted else "yellow"
    console.print(f"[{colour}]{'promoted' if d.promoted else 'not promoted'}[/] v{d.version}: {d.reason}")
    if not d.promoted and d.previous != d.version:
        raise typer.Exit(1)  # refused by the gate: scripts can tell


@app.command()
def rollback(project: ProjectOpt = Path(".")) -> None:
    """Move `champion` back to the previous champion."""
    from tsops.lifecycle.promotion import rollback as run

    d = run(_load(project, "rollback"))
    console.print(f"[green]champion[/] is v{d.version} again ({d.reason})")


@app.command()
def monitor(
    project: ProjectOpt = Path("."),
    report: Annotated[
        bool, typer.Option("--report", help="write the Evidently drift report, log it to the champion's run")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="--report: HTML path (default under .tsops/reports/)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Online accuracy (rolling MAE per model version and step) and drift from the stored history."""
    from tsops.monitoring.report import summary, write_report

    loaded = _load(project, "monitor")
    if report:
        out = write_report(loaded, output)
        result = {
            "path": str(out.path),
            "model_version": out.version,
            "run_id": out.run_id,
            "reference_rows": out.reference_rows,
            "current_rows": out.current_rows,
            "scores": out.scores,
        }
        if as_json:
            print(json.dumps(result))
            return
        top = ", ".join(f"{k} {v:.3f}" for k, v in sorted(out.scores.items(), key=lambda kv: -kv[1])[:5])
        console.print(f"[green]drift report[/] {out.path} (logged to run {out.run_id} of v{out.version})")
        console.print(f"reference {out.reference_rows} rows vs recent {out.current_rows} rows; PSI: {top}")
        return
    info = summary(loaded)
    if as_json:
        print(json.dumps(info, default=str))
        return
    if not info["accuracy"] and not info["drift"]:
        console.print("no monitoring history yet: a stream with the monitor stores it while it runs")
        return
    few = "[yellow]few[/]"
    table = Table(title="online accuracy: rolling MAE (latest snapshot)")
    columns = ("version", "aliases", "backtest MAE", "online MAE", "coverage", "errors", "MAE by step")
    for col in (*columns, "data up to"):
        table.add_column(col)
    for v in info["accuracy"]:
        steps = " ".join(f"{s['mae']:.2f}" for s in v["by_step"])
        mae = "-" if v["mae"] is None else f"{v['mae']:.4f}" + ("" if v["enough"] else f" ({few})")
        coverage = ", ".join(
            f"{level}%: {c['coverage']:.1%}"
            for level, c in sorted(v["coverage"].items(), key=lambda kv: float(kv[0]))
            if c["coverage"] is not None
        )
        table.add_row(
            str(v["model_version"]),
            ", ".join(v["aliases"]),
            "-" if v["backtest_mae"] is None else f"{v['backtest_mae']:.4f}",
            mae,
            coverage or "-",
            f"{v['errors']} over {v['steps_with_errors']}/{v['horizon']} steps",
            steps if len(steps) < 80 else steps[:77] + "...",
            _event_time(v["event_time"]),
        )
    console.print(table)
    snapshots = sorted({str(v["at"]) for v in info["accuracy"]} | {str(d["at"]) for d in info["drift"]})
    threshold, watched = info["drift_threshold"], info["drift_watched"] or []
    trigger = (
        f"the drift trigger watches {', '.join(watched)} at {threshold}" if watched else "no drift trigger"
    )
    table = Table(title=f"drift: PSI against the training reference ({trigger})")
    for col in ("column", "PSI", "observations", "reference", "data up to"):
        table.add_column(col)
    for d in info["drift"]:
        flag = "[red]" if d["feature"] in watched and d["score"] >= threshold and d["enough"] else ""
        psi = f"{flag}{d['score']:.4f}" + ("" if d["enough"] else f" ({few})")
        table.add_row(d["feature"], psi, str(d["n"]), f"v{d['model_version']}", _event_time(d["event_time"]))
    console.print(table)
    if any(not v["enough"] for v in info["accuracy"]) or any(not d["enough"] for d in info["drift"]):
        console.print(
            f"few: the figure rests on fewer than {info['min_errors_per_step']} errors in some horizon "
            f"step (accuracy) or {info['min_drift_rows']} observations (drift); read it as a first "
            "sign only, the retrain triggers wait for more",
            highlight=False,
        )
    if snapshots:
        console.print(
            f"data up to: event time of the latest observation; snapshot taken at {snapshots[-1][:19]} "
            "(wall clock, UTC)",
            highlight=False,
        )


def _event_time(value: Any) -> str:
    return "-" if not value else str(value)[:19]


@app.command()
def retrain(
    project: ProjectOpt = Path("."),
    mode: Annotated[
        str | None, typer.Option(help="warm | scratch (default: warm if there is a champion)")
    ] = None,
    reason: Annotated[str, typer.Option(help="recorded with the decision")] = "requested on the command line",
    as_json: Annotated[bool, typer.Option("--json", help="print the decision as JSON")] = False,
) -> None:
    """Train a challenger (warm start or from scratch), gate it, promote it if the policy allows."""
    from tsops.errors import ConfigError, ModelError
    from tsops.lifecycle.retrain import retrain as run

    if mode not in (None, "warm", "scratch"):
        raise ConfigError(f"unknown mode {mode!r}: use warm or scratch", "--mode")
    d = run(_load(project, "retrain"), mode=mode, reason=reason, show_progress=not as_json)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(d.as_dict()))
    else:
        colour = {"promoted": "green", "logged": "green", "rejected": "yellow"}.get(d.outcome, "red")
        console.print(f"[{colour}]{d.outcome}[/] ({d.mode}) {d.reason}")
    # A decision, promoted or rejected by the gate, is the job done (exit 0: a scheduler such as
    # a Kubernetes CronJob must not retry it); only a failed run is an error.
    if d.outcome == "failed":
        if as_json:
            raise typer.Exit(2)
        raise ModelError(d.reason, "tsops retrain")


@app.command()
def status(
    project: ProjectOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Models, versions, aliases and metrics; feature views; online rows."""
    from tsops.status import collect

    info = collect(_load(project, "status"))
    if as_json:
        print(json.dumps(info, indent=1, default=str))
        return
    table = Table(title=f"models of {info['project']}")
    for col in ("name", "version", "aliases", "LSTM MAE", "MASE", "best baseline", "its MAE", "ratio"):
        table.add_column(col)
    for m in info["models"]:
        met = m["metrics"]
        best = m.get("best_baseline")
        table.add_row(
            m["name"],
            str(m["version"]),
            ", ".join(m["aliases"]),
            *(f"{met[k]:.4f}" if k in met else "-" for k in ("lstm_mae", "lstm_mase")),
            best or "-",
            f"{met[f'{best}_mae']:.4f}" if best else "-",
            f"{m['lstm_vs_best_baseline']:.3f}" if best else "-",
        )
    console.print(table)
    champion = next((m for m in info["models"] if "champion" in m["aliases"]), None)
    if champion and "verdict" in champion:
        colour = "green" if champion["beats_best_baseline"] else "red"
        console.print(f"champion v{champion['version']}: [{colour}]{champion['verdict']}[/]")
        if champion.get("lstm_base"):
            console.print(
                f"  its network corrects {champion['lstm_base']}: MAE {champion['lstm_base_mae']:.4f} alone",
                highlight=False,
            )
    for m in info["models"]:
        if m.get("online"):
            console.print(f"v{m['version']} online: {_online_line(m)}", highlight=False, markup=False)
    s = info["schema"]
    console.print(f"schema: entity={s['entity']} time={s['time']} target={s['target']} freq={s['freq']}")
    for m in info["models"]:
        if m["left_out"] and (shown := set(m["aliases"]) & {"champion", "challenger"}):
            names = ", ".join(list(m["left_out"])[:10]) + (" …" if len(m["left_out"]) > 10 else "")
            console.print(
                f"v{m['version']} ({', '.join(sorted(shown))}) left out "
                f"{len(m['left_out'])} entit{'y' if len(m['left_out']) == 1 else 'ies'} with too little "
                f"or unusable history: {names}",
                highlight=False,
                markup=False,
            )
    for v in info["feature_views"]:
        console.print(f"feature view {v['name']}: {v['features']} features, entities {v['entities']}")
    console.print(
        f"entities: {info['entity_count']}; online store ({info['online_store']}) rows: {info['online_rows']}"
    )
    if info["decisions"]:
        table = Table(title="decisions (latest last)")
        for col in ("at", "decision", "version", "champion", "trigger", "reason"):
            table.add_column(col)
        for d in info["decisions"][-20:]:
            table.add_row(
                d["at"][:19],
                f"{d['kind']} {d['outcome']}" + (f" ({d['mode']})" if d["mode"] else ""),
                "-" if d["version"] is None else str(d["version"]),
                "-" if d["champion"] is None else str(d["champion"]),
                d["trigger"],
                d["reason"],
            )
        console.print(table)


def _online_line(model: dict[str, Any]) -> str:
    """`MAE 1.234 (n 400); 80% interval covers 79.0% (n 400; backtest 81.8%), ...`"""
    live = model["online"]
    parts = [f"MAE {live['mae']:.4f} (n {live['n']})" if live.get("mae") is not None else "MAE -"]
    for level, c in sorted(live["coverage"].items(), key=lambda kv: float(kv[0])):
        backtest = model["backtest_coverage"].get(level)
        held = f"; backtest {backtest:.1%}" if backtest is not None else ""
        parts.append(f"{level}% interval covers {c['coverage']:.1%} (n {c['n']}{held})")
    return "; ".join(parts)


entities_app = typer.Typer(no_args_is_help=True, help="Entities in the feature stores.")
app.add_typer(entities_app, name="entities")


@entities_app.command("drop")
def entities_drop(
    names: Annotated[list[str], typer.Argument(help="entity name(s) to remove")],
    project: ProjectOpt = Path("."),
) -> None:
    """Remove entities from the offline and online stores (e.g. one a mistyped event created).
    Stop stream workers first."""
    from tsops.features.entities import drop_entities

    loaded = _load(project, "ingest")
    result = drop_entities(loaded, names)
    console.print(
        f"dropped {', '.join(result.dropped)}: {result.offline_rows} offline row(s) removed, "
        "online features and stream state cleared",
        highlight=False,
        markup=False,
    )
    for name in result.in_history:
        console.print(
            f"[yellow]note:[/] {name} is still in {loaded.settings.data.path}: "
            "remove it there, or the next tsops ingest brings it back",
            highlight=False,
        )


@app.command()
def serve(
    project: ProjectOpt = Path("."),
    port: Annotated[int | None, typer.Option(help="port (default: serving.port)")] = None,
    workers: Annotated[int | None, typer.Option(help="processes (default: serving.workers)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default: serving.host)")] = None,
) -> None:
    """Serve the champion over HTTP: MLflow scoring, OIP v2, forecast by entity, metrics."""
    from tsops.serving.command import serve as run

    run(project, port=port, workers=workers, host=host)


@app.command()
def stream(
    project: ProjectOpt = Path("."),
    source: Annotated[str | None, typer.Option(help="file:PATH or kafka (default: settings)")] = None,
    follow: Annotated[bool, typer.Option(help="file source: wait for more lines at the end")] = False,
    from_beginning: Annotated[bool, typer.Option(help="file source: ignore the checkpoint")] = False,
    max_events: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    until_idle: Annotated[
        float | None, typer.Option(help="stop when no event arrived for this many seconds")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus metrics here")] = None,
    metrics_host: Annotated[
        str, typer.Option(help="address of the metrics and /healthz server (0.0.0.0 in a pod)")
    ] = "127.0.0.1",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    engine: Annotated[
        str | None, typer.Option(help="python or spark (default: stream.engine)", show_default=False)
    ] = None,
) -> None:
    """Turn observation events into fresh features and forecasts (python or Spark engine)."""
    from tsops.errors import ConfigError
    from tsops.stopping import stop_on_signals
    from tsops.streaming.runner import parse_source

    with stop_on_signals() as stop:  # from start-up on: finish the batch, commit, exit 0
        settings_only = _load(project)  # mistakes in the command are refused before any wait
        engine = engine or settings_only.settings.stream.engine
        if engine not in ("python", "spark"):
            raise ConfigError(f"unknown engine {engine!r}: use python or spark", "--engine")
        kind, _ = parse_source(source, settings_only)
        if engine == "spark":
            from tsops.spark_session import require_pyspark

            require_pyspark("--engine")
        loaded = _load(project, "stream", kafka=kind == "kafka")
        options: dict[str, Any] = dict(
            stop=stop,
            source=source,
            follow=follow,
            from_beginning=from_beginning,
            max_events=max_events,
            until_idle=until_idle,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        if engine == "spark":
            from tsops.streaming.spark.engine import run_spark_stream

            summary = run_spark_stream(loaded, **options).as_dict()
        else:
            from tsops.streaming.runner import run_stream

            summary = run_stream(loaded, **options).as_dict()
    if as_json:
        print(json.dumps(summary))
        return
    dead = ", ".join(f"{k} {v}" for k, v in sorted(summary["dead_letters"].items())) or "none"
    console.print(
        f"consumed {summary['consumed']}, processed {summary['processed']}, "
        f"predictions {summary['predictions']}, dead letters: {dead}"
    )


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="CSV or JSONL of events")],
    project: ProjectOpt = Path("."),
    to: Annotated[str, typer.Option(help="destination (kafka)")] = "kafka",
    rate: Annotated[float, typer.Option(help="events per second, 0 = as fast as possible")] = 0.0,
    topic: Annotated[str | None, typer.Option(help="topic (default: stream.kafka.events_topic)")] = None,
) -> None:
    """Publish a file of events to a Kafka topic, keyed by entity."""
    from tsops.errors import ConfigError
    from tsops.streaming.runner import replay_to_kafka

    if to != "kafka":
        raise ConfigError(f"unknown destination {to!r}; only kafka", "--to")
    result = replay_to_kafka(_load(project), file, rate=rate, topic=topic)
    console.print(f"published {result['published']} events to {result['topic']} in {result['seconds']} s")


@app.command()
def batch(
    config: Annotated[Path, typer.Option("--config", "-c", help="batch job file (YAML)")],
    project: Annotated[
        Path | None, typer.Option("--project", "-p", help="tsops project (overrides the job's `project`)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Score a source with any MLflow model into a target, in bounded memory (see docs/batch.md)."""
    from tsops.batch import load, run
    from tsops.stopping import stop_on_signals

    # checked between chunks: the targets are aborted, nothing is left; a second signal does
    # not wait for the chunk to end
    with stop_on_signals(second_interrupts=True) as stop:
        job = load(config, project.resolve() if project else None)
        summary = run(job, show_progress=not as_json, stop=stop)
    if as_json:
        print(json.dumps(summary.as_dict()))
        return
    rejected = f", rejected {summary.rejected:,} → {summary.rejects}" if summary.rejects else ""
    parts = "chunk(s)" if summary.engine == "local" else "partition(s)"
    console.print(
        f"[green]scored[/] {summary.rows_read:,} rows in {summary.chunks} {parts} with the {summary.engine} "
        f"engine: wrote {summary.rows_written:,} to {summary.target}{rejected} "
        f"({summary.seconds:.1f} s, {summary.rows_per_second:,.0f} rows/s)"
    )


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="the demo project folder")] = Path("demo-project"),
    duration: Annotated[
        float | None, typer.Option(help="end after this many seconds (default: when the replay ends)")
    ] = None,
    seconds: Annotated[float, typer.Option(help="wall-clock length of the accelerated replay")] = 150.0,
    entities: Annotated[int, typer.Option(help="series in the synthetic project")] = 6,
    port: Annotated[int, typer.Option(help="port of the server and its dashboard")] = 8000,
    kafka: Annotated[bool, typer.Option("--kafka", help="replay through an embedded Kafka broker")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the timeline as one JSON object")] = False,
) -> None:
    """The whole live loop: train, serve with the dashboard, stream with drift injected midway,
    watch accuracy and drift, retrain, promote, recover. Ctrl-C ends it."""
    from tsops.demo import DemoOptions, run

    options = DemoOptions(
        directory=directory, entities=entities, seconds=seconds, duration=duration, port=port, kafka=kafka
    )
    out = Console(stderr=True) if as_json else console
    timeline = run(options, out)
    if as_json:
        print(json.dumps(timeline, default=str))
        return
    console.print_json(json.dumps(timeline, default=str))


deploy_app = typer.Typer(help="Kubernetes: render the kustomize tree of this project's cluster settings.")
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("render")
def deploy_render(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for base/ and overlays/{dev,prod}")],
    project: ProjectOpt = Path("."),
    image: Annotated[str | None, typer.Option(help="the tsops image (default: deploy.image)")] = None,
) -> None:
    """Write a kustomize tree (base, overlays/dev, overlays/prod) from tsops.yaml; `kubectl apply -k`."""
    from tsops.deploy.render import render

    result = render(_load(project), out, image=image)
    console.print(
        f"[green]rendered[/] {len(result.files)} files into {out} (base, overlays/dev, overlays/prod)"
    )
    if result.secrets:
        keys = " ".join(f"--from-literal={k}=..." for k in result.secrets)
        console.print(
            f"the pods read the Secret {result.secrets and 'tsops-secrets'}: kubectl create secret generic "
            f"tsops-secrets -n <namespace> {keys}"
        )
    console.print(f"next: kubectl apply -k {out}/overlays/dev")


def _usage_error_classes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage errors, aborts) of click and of the copy Typer bundles (`typer._click`, Typer ≥ 0.29):
    which one a command line raises depends on the Typer version pip resolved."""
    import importlib

    usage: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = []
    for name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage += [c for c in (getattr(module, "ClickException", None),) if isinstance(c, type)]
        aborts += [c for c in (getattr(module, "Abort", None),) if isinstance(c, type)]
    return tuple(usage), tuple(aborts)


def _usage_message(error: BaseException) -> str:
    """One line: what was wrong and where to look, without the usage block click prints."""
    ctx = getattr(error, "ctx", None)
    text = str(error.format_message()) if hasattr(error, "format_message") else str(error)
    if ctx is not None and type(error).__name__ != "NoArgsIsHelpError":
        end = "" if text.endswith((".", "?", "!")) else "."
        text = f"{text}{end} See '{ctx.command_path} --help'."
    return text


def main() -> None:
    from tsops.console import VERBOSE_ENV, verbose

    if _take_verbose_flag(sys.argv):
        os.environ[VERBOSE_ENV] = "1"
    _own_log_lines()
    if not verbose():
        _quiet_libraries()
    usage_errors, aborts = _usage_error_classes()
    code = 0
    try:
        result = app(standalone_mode=False, prog_name="tsops")  # the code of a `typer.Exit(code)`, else None
        code = result if isinstance(result, int) else 0
    except TsopsError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        code = e.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except usage_errors as e:  # a mistyped command, option or argument
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `tsops`: the help is the message
            console.print(_usage_message(e), highlight=False, markup=False)
        else:
            err_console.print(f"[bold red]error:[/] {escape(_usage_message(e))}", highlight=False)
        exit_code = getattr(e, "exit_code", 2)
        code = exit_code if isinstance(exit_code, int) else 2
    except aborts:
        err_console.print("aborted")
        code = 130
    except Exception as e:
        full = disk_full(e)  # wherever a write found no space: a message, not a traceback
        if full is None:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(full))}", highlight=False)
        code = full.exit_code
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: duckdb's bindings print spurious "leaked" warnings there.
    os._exit(code)
