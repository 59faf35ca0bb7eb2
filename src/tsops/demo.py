"""`tsops demo`: the whole live loop on one machine.

A synthetic project is created, ingested, trained (quick) and promoted; then, together:
`tsops serve` (with the dashboard) in a thread, a stream replay of the series' continuation in
accelerated time with drift injected midway, the stream's monitor (online accuracy, drift), and
the continual-learning loop (`lifecycle.retrain.Retrainer`) acting on the monitor's figures. A
live table in the terminal shows what the dashboard shows; the demo ends when the replay ends,
after `--duration` seconds, or on Ctrl-C, and prints its timeline (`--json`: one object).

The accuracy figures of the timeline are computed at the end from the prediction records and
the actuals themselves (not from a rolling window), so they are exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tsops.demo_broker import BrokerError, EmbeddedBroker
from tsops.errors import ConfigError
from tsops.settings import CONFIG_FILE, Project

log = logging.getLogger("tsops.demo")

# The demo project: small enough to train in seconds on a laptop, tuned so that drift is seen
# within a few simulated days and a retrain has post-drift data to learn from.
DEMO_SETTINGS: dict[str, Any] = {
    "model": {"quick_epochs": 6, "epochs": 6, "hidden_size": 32},
    # the live loop retrains often: the statistical baselines (tens of seconds) are left out
    "backtest": {"holdout": 168, "stride": 11, "baselines": []},
    "serving": {"reload_interval_s": 1.0},
    "stream": {"reload_interval_s": 1.0, "checkpoint_interval_ms": 500, "batch_size": 500},
    "monitoring": {"accuracy_window": 400, "drift_window": 240, "snapshot_interval_s": 2.0},
    "retrain": {
        "triggers": [
            {"type": "drift", "threshold": 0.5, "min_rows": 120, "mode": "warm"},
            {"type": "accuracy", "margin": 0.5, "min_samples": 60, "mode": "warm"},
        ],
        "cooldown": "20s",
        "holdout": 72,
        "warm_window": 24 * 21,
        "warm_epochs": 4,
        "warm_learning_rate": 2e-3,
        "rollback": {"window": 100, "margin": 0.25},
    },
}


DRIFT_SEEN = 0.25  # PSI of the target over a full drift window: "drift detected" in the timeline


@dataclass
class DemoOptions:
    directory: Path = Path("demo-project")
    entities: int = 6
    steps: int = 24 * 16  # simulated hours streamed after the history
    drift_at: float = 0.35  # fraction of the stream after which drift is injected
    seconds: float = 150.0  # wall-clock length of the replay
    duration: float | None = None  # stop after this many seconds (default: when the replay ends)
    port: int = 8000
    kafka: bool = False
    fresh: bool = True


@dataclass
class Timeline:
    started_at: float = field(default_factory=time.time)
    drift_injected_at: str | None = None  # event time
    drift_detected_at: str | None = None  # event time the target's PSI first reached DRIFT_SEEN
    retrains: list[dict[str, Any]] = field(default_factory=list)
    promotions: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "drift_injected_at": self.drift_injected_at,
            "drift_detected_at": self.drift_detected_at,
            "retrains": self.retrains,
            "promotions": self.promotions,
            "rollbacks": self.rollbacks,
        }


def prepare(options: DemoOptions, console: Console) -> Project:
    """Create, ingest, train (quick) and promote the demo project."""
    from tsops.features.ingest import ingest
    from tsops.features.store import FeatureStoreClient
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train
    from tsops.scaffold import init_example

    root = options.directory.resolve()
    if options.fresh and (root / CONFIG_FILE).exists():
        shutil.rmtree(root)
    if not (root / CONFIG_FILE).exists():
        init_example(root, "synthetic", entities=options.entities)
        raw = yaml.safe_load((root / CONFIG_FILE).read_text())
        for section, values in DEMO_SETTINGS.items():
            raw.setdefault(section, {}).update(values)
        (root / CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
        FeatureStoreClient(Project.load(root)).apply()
    project = Project.load(root)
    # Feast prints its materialisation to stdout; keep stdout for the --json timeline.
    with console.status("ingesting the history …"), contextlib.redirect_stdout(sys.stderr):
        ingest(project, quiet=True)
    with console.status("training the first model (quick) …"):
        outcome = train(project, quick=True, show_progress=False)
    promote(project)
    console.print(
        f"[green]champion v{outcome.version}[/] trained in {outcome.seconds:.0f} s "
        f"(backtest MAE {outcome.report.overall['lstm']['mae']:.3f})"
    )
    return project


def write_events(project: Project, options: DemoOptions) -> tuple[Path, pd.Timestamp]:
    """The continuation of the series with drift from `drift_at` of the way on: the daily and
    weekly patterns grow 2.5x and the level shifts, so the champion's learned corrections are
    wrong until it is retrained on post-drift data."""
    from tsops.data.synthetic import DriftSpec, SyntheticSpec, generate_range

    syn = project.settings.data.synthetic
    assert syn is not None
    base = SyntheticSpec(entities=syn.entities, start=syn.start, periods=syn.periods, seed=syn.seed)
    drift_step = syn.periods + int(options.steps * options.drift_at)
    drift_time = pd.Timestamp(base.start) + pd.Timedelta(base.freq) * drift_step
    spec = SyntheticSpec(
        entities=syn.entities,
        start=syn.start,
        periods=syn.periods,
        seed=syn.seed,
        drift=DriftSpec(at=drift_time, level_shift=1.0, amplitude_scale=2.5),
    )
    frame = generate_range(spec, syn.periods, syn.periods + options.steps)
    frame = frame.sort_values(["timestamp", "entity_id"])
    path = project.root / "events.jsonl"
    with path.open("w") as f:
        for e, t, v in frame.itertuples(index=False):
            f.write(json.dumps({"entity_id": e, "timestamp": t.isoformat(), "value": float(v)}) + "\n")
    return path, drift_time


def start_server(project: Project, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    from tsops.serving.app import create_app

    config = uvicorn.Config(
        create_app(project), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=3
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tsops-serve", daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.1)
    return server, thread


def accuracy_phases(
    project: Project, events: Path, drift_time: pd.Timestamp, promoted: list[int]
) -> dict[str, Any]:
    """MAE of the predictions, joined with the actuals, in three phases: made before the drift;
    made after it by the first champion; made by a version promoted after the drift."""
    actual = {}
    for line in events.read_text().splitlines():
        e = json.loads(line)
        actual[(e["entity_id"], e["timestamp"])] = e["value"]
    phases: dict[str, list[float]] = {"before": [], "drifted": [], "promoted": []}
    path = project.root / ".tsops" / "predictions.jsonl"
    seen: set[str] = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        p = json.loads(line)
        if p["key"] in seen:
            continue
        seen.add(p["key"])
        made = pd.Timestamp(p["event_time"])
        if p["model_version"] in promoted:
            phase = "promoted"
        elif made < drift_time:
            phase = "before"
        else:
            phase = "drifted"
        for t, v in zip(p["target_times"], p["values"], strict=True):
            if phase == "before" and pd.Timestamp(t) >= drift_time:
                continue  # a pre-drift forecast of a drifted target belongs to neither phase
            a = actual.get((p["entity"], pd.Timestamp(t).isoformat()))
            if a is not None:
                phases[phase].append(abs(v - a))

    def mae(xs: list[float]) -> float | None:
        return round(float(np.mean(xs)), 4) if xs else None

    return {
        "mae_before_drift": mae(phases["before"]),
        "mae_after_drift": mae(phases["drifted"]),
        "mae_after_promotion": mae(phases["promoted"]),
        "errors_counted": {k: len(v) for k, v in phases.items()},
    }


def run(options: DemoOptions, console: Console) -> dict[str, Any]:
    from tsops import registry
    from tsops.lifecycle.retrain import Retrainer
    from tsops.monitoring.monitor import StreamMonitor
    from tsops.streaming.metrics import StreamMetrics
    from tsops.streaming.runner import replay_to_kafka, run_stream

    project = prepare(options, console)
    events, drift_time = write_events(project, options)
    timeline = Timeline(drift_injected_at=drift_time.isoformat())
    first_champion = registry.version_for_alias(
        registry.connect(project), project.settings.model.name, registry.CHAMPION
    )
    speedup = options.steps * project.settings.series.step.total_seconds() / options.seconds
    server, server_thread = start_server(project, options.port)
    console.print(f"dashboard: [bold cyan]http://127.0.0.1:{options.port}/[/]  (Ctrl-C ends the demo)")

    metrics = StreamMetrics()
    monitor = StreamMonitor(project, registry=metrics.registry)
    retrainer = Retrainer(project)
    stop = threading.Event()
    summary: dict[str, Any] = {}
    source = "kafka" if options.kafka else f"file:{events}"
    env = {**os.environ, "TSOPS_STREAM__SPEEDUP": str(speedup)}
    broker = _start_broker() if options.kafka else None
    if broker is not None:
        env["TSOPS_STREAM__KAFKA__BOOTSTRAP_SERVERS"] = broker.bootstrap
        rate = options.steps * options.entities / options.seconds
        publisher = threading.Thread(
            target=replay_to_kafka, args=(Project.load(project.root, env), events), kwargs={"rate": rate}
        )
        publisher.start()
        console.print(f"events published to Kafka at {broker.bootstrap} ({rate:.0f}/s)")

    def stream() -> None:
        result = run_stream(
            Project.load(project.root, env),
            source=source,
            stop=stop,
            metrics=metrics,
            monitor=monitor,
            until_idle=10.0 if options.kafka else None,
        )
        summary.update(result.as_dict())

    def learn() -> None:
        while not stop.wait(2.0):
            snap = monitor.snapshot()
            target = snap["drift"]["scores"].get(project.settings.series.target) or {}
            if (
                timeline.drift_detected_at is None
                and target.get("score", 0.0) >= DRIFT_SEEN
                and target.get("n", 0) >= monitor.settings.drift_window
            ):
                timeline.drift_detected_at = snap["event_time"]
            try:
                decision = retrainer.maybe_retrain(snap)
            except Exception as e:  # the loop must go on: the decision log has the reason
                log.warning("continual learning: %s", e)
                continue
            if decision is None:
                continue
            entry = {"event_time": snap["event_time"], **decision.as_dict()}
            if decision.kind == "rollback":
                if decision.outcome == "rolled_back":  # not the checks that kept the champion
                    timeline.rollbacks.append(entry)
            else:
                timeline.retrains.append(entry)
            if decision.kind == "retrain" and decision.outcome == "promoted":
                timeline.promotions.append(entry)

    threads = [
        threading.Thread(target=stream, name="demo-stream"),
        threading.Thread(target=learn, name="demo-learn"),
    ]
    for t in threads:
        t.start()
    deadline = None if options.duration is None else time.monotonic() + options.duration
    try:
        with Live(_table(monitor, timeline, summary), console=console, refresh_per_second=2) as live:
            while threads[0].is_alive():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                live.update(_table(monitor, timeline, summary))
                time.sleep(0.5)
            live.update(_table(monitor, timeline, summary))
    except KeyboardInterrupt:
        console.print("stopping …")
    finally:
        stop.set()
        for t in threads:
            t.join(600)
        server.should_exit = True
        server_thread.join(30)
        if broker is not None:
            broker.stop()
    promoted = [int(p["champion"]) for p in timeline.promotions if p.get("champion")]
    result = {
        **timeline.as_dict(),
        **accuracy_phases(project, events, drift_time, promoted),
        "first_champion": first_champion,
        "stream": summary,
        "project": str(project.root),
        "seconds": round(time.time() - timeline.started_at, 1),
    }
    return result


def _table(monitor: Any, timeline: Timeline, summary: dict[str, Any]) -> Table:
    snap = monitor.snapshot()
    table = Table(title="tsops demo: the live loop", show_header=False, expand=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("event time", str(snap.get("event_time") or "–"))
    table.add_row("drift injected at", str(timeline.drift_injected_at))
    for figure in snap["accuracy"]:
        mae = figure.get("mae")
        table.add_row(
            f"online MAE v{figure['model_version']}", "–" if mae is None else f"{mae:.3f} (n={figure['n']})"
        )
    top = snap["drift"]["max"]
    table.add_row(
        "drift (PSI, max)",
        "–" if top is None else f"{top:.2f} on {snap['drift']['max_feature']}",
    )
    table.add_row("retrains", str(len(timeline.retrains)))
    for r in timeline.retrains[-3:]:
        table.add_row("", f"{r.get('outcome')}: {str(r.get('reason'))[:90]}")
    table.add_row("promotions", ", ".join(f"v{p.get('champion')}" for p in timeline.promotions) or "–")
    return table


def _start_broker() -> EmbeddedBroker:
    """`--kafka`: a throw-away, memory-only Kafka-protocol broker on a free loopback port."""
    try:
        return EmbeddedBroker().start()
    except BrokerError as exc:
        raise ConfigError(f"--kafka needs the embedded broker: {exc}", "--kafka") from None
