"""Online accuracy and drift per micro-batch: `StreamMonitor.on_batch` against what a user would
otherwise run on every refresh — a pandas join of all stored forecasts with the actuals (rolling
MAE per version and step) and an Evidently `DataDriftPreset` report on the recent window.

    .venv/bin/python benchmarks/monitoring.py [--entities 50] [--steps 400] [--batch 500]

Everything is generated: the synthetic example's series continued past its history, their
features from the batch engine, and forecasts in the stream processor's record format. Prints
per-batch latency percentiles, events per second and the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from tsops.data.synthetic import SyntheticSpec, generate_range
from tsops.features.definitions import FeatureSet
from tsops.features.engines import batch_features
from tsops.monitoring import drift
from tsops.monitoring.monitor import StreamMonitor
from tsops.scaffold import init_example
from tsops.streaming.events import Event
from tsops.streaming.steps import prediction_records


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    return "p50 {:.2f} ms  p95 {:.2f} ms  p99 {:.2f} ms".format(*np.percentile(ms, [50, 95, 99]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=50)
    parser.add_argument("--steps", type=int, default=400, help="streamed steps per entity")
    parser.add_argument("--batch", type=int, default=500, help="events per micro-batch")
    parser.add_argument("--evidently-every", type=int, default=10, help="run Evidently on every Nth batch")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    root = Path(tempfile.mkdtemp(prefix="tsops-bench-")) / "proj"
    project = init_example(root, "synthetic", entities=args.entities)
    settings = project.settings
    syn = settings.data.synthetic
    assert syn is not None
    spec = SyntheticSpec(entities=syn.entities, start=syn.start, periods=syn.periods, seed=syn.seed)
    history = pd.read_parquet(project.data_path)
    stream = generate_range(spec, syn.periods, syn.periods + args.steps)
    fs = FeatureSet(settings.features)
    full = batch_features(
        pd.concat([history, stream]).sort_values(["entity_id", "timestamp"]).reset_index(drop=True),
        fs,
        entity="entity_id",
        time="timestamp",
        target="value",
    )
    train = full[full["timestamp"] < stream["timestamp"].min()].dropna()
    reference = drift.training_reference(project, train)
    live = full[full["timestamp"] >= stream["timestamp"].min()].sort_values(["timestamp", "entity_id"])
    events = [
        Event(e, t, float(v)) for e, t, v in live[["entity_id", "timestamp", "value"]].itertuples(index=False)
    ]
    rows = live[fs.names].to_dict("records")
    rng = np.random.default_rng(0)
    values = live["value"].to_numpy()
    forecasts = values[:, None] + rng.normal(0, 5, (len(values), settings.model.horizon))
    records = prediction_records(
        events,
        forecasts,
        series=settings.series,
        model="synthetic",
        version=1,
        latencies_ms=[0.0] * len(events),
    )
    batches = [
        (events[i : i + args.batch], rows[i : i + args.batch], records[i : i + args.batch])
        for i in range(0, len(events), args.batch)
    ]
    print(
        f"{args.entities} entities × {args.steps} steps = {len(events):,} events, horizon "
        f"{settings.model.horizon}, {len(batches)} micro-batches of {args.batch}"
    )

    # tsops: one StreamMonitor, called once per micro-batch.
    monitor = StreamMonitor(project, persist=False, reference_loader=lambda v: reference)
    ours = []
    for ev, fr, pr in batches:
        started = time.perf_counter()
        monitor.on_batch(ev, fr, pr)
        ours.append(time.perf_counter() - started)
    snapshot = monitor.snapshot()
    tsops_mae = snapshot["accuracy"][0]["mae_by_step"]

    # The alternative: keep every forecast and actual, re-join and re-aggregate on each refresh.
    window = settings.monitoring.accuracy_window
    stored_forecasts: list[pd.DataFrame] = []
    stored_actuals: list[pd.DataFrame] = []
    theirs = []
    horizon = settings.model.horizon
    for ev, _, pr in batches:
        started = time.perf_counter()
        stored_forecasts.append(
            pd.DataFrame(
                {
                    "entity": np.repeat([r["entity"] for r in pr], horizon),
                    "target": pd.to_datetime(np.concatenate([r["target_times"] for r in pr])),
                    "step": np.tile(np.arange(1, horizon + 1), len(pr)),
                    "version": np.repeat([r["model_version"] for r in pr], horizon),
                    "forecast": np.concatenate([r["values"] for r in pr]),
                }
            )
        )
        stored_actuals.append(
            pd.DataFrame(
                {
                    "entity": [e.entity for e in ev],
                    "target": [e.time for e in ev],
                    "actual": [e.value for e in ev],
                }
            )
        )
        joined = pd.concat(stored_forecasts).merge(pd.concat(stored_actuals), on=["entity", "target"])
        joined["error"] = (joined["forecast"] - joined["actual"]).abs()
        joined = joined.sort_values("target", kind="stable")
        mae = joined.groupby(["version", "step"])["error"].apply(lambda s: s.tail(window).mean())
        theirs.append(time.perf_counter() - started)
    assert np.allclose(mae.loc[1].to_numpy(), tsops_mae), "the two paths disagree"

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = drift.monitored_columns(project)
    frame = live.rename(columns={"value": settings.series.target})
    ref = train.assign(**{settings.series.target: train["lag_0"]})[columns].sample(5000, random_state=0)
    definition = DataDefinition(numerical_columns=columns)
    evidently_times = []
    for i in range(0, len(batches), args.evidently_every):
        end = min(len(frame), (i + 1) * args.batch)
        recent = frame.iloc[max(0, end - settings.monitoring.drift_window) : end][columns]
        started = time.perf_counter()
        Report([DataDriftPreset(columns=columns, method="psi")]).run(
            Dataset.from_pandas(recent.reset_index(drop=True), data_definition=definition),
            Dataset.from_pandas(ref.reset_index(drop=True), data_definition=definition),
        )
        evidently_times.append(time.perf_counter() - started)

    n = len(events)
    print(
        f"tsops StreamMonitor.on_batch (accuracy + drift): {percentiles(ours)}; {n / sum(ours):,.0f} events/s"
    )
    rate = n / sum(theirs)
    print(f"pandas re-join on every batch (accuracy only):   {percentiles(theirs)}; {rate:,.0f} events/s")
    print(f"Evidently DataDriftPreset on the drift window:   {percentiles(evidently_times)} per report")
    print(
        f"ratios (median per batch): pandas / tsops {np.median(theirs) / np.median(ours):.1f}×, "
        f"Evidently / tsops {np.median(evidently_times) / np.median(ours):.1f}×; last batch: pandas / tsops "
        f"{theirs[-1] / ours[-1]:.1f}× (the re-join grows with the history, the monitor does not)"
    )
    print(f"pending forecasts at the end: {snapshot['counts']['pending_forecasts']:,}")


if __name__ == "__main__":
    main()
