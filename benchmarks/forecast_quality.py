"""Forecast quality benchmark: the default `tsops train` against the field's statistical models
on real data of four frequencies, on tsops' own rolling-origin backtest, in one run.

    .venv/bin/python benchmarks/forecast_quality.py [--datasets taylor,tmy,seattle,co2] [--quick]
                                                    [--threads 1] [--out results.json]

Each dataset ships inside a pip package (nothing is downloaded):

- taylor: `pmdarima.datasets.load_taylor`, 30 min, 1 entity: electricity demand of England
  and Wales, 2000-06-05 .. 08-27 (4,032 steps).
- tmy: `pvlib.iotools.read_tmy3`/`read_tmy2` on pvlib's bundled TMY files, 1 h, 3 entities:
  typical-year air temperature at Sand Point AK, Greensboro NC and Miami FL (8,760 steps each).
- seattle: `vega_datasets` `seattle-weather`, 1 day, 1 entity: daily maximum temperature at
  Seattle, 2012-01-01 .. 2015-12-31 (1,461 days; not the weather example's hourly 2010 series).
- co2: `statsmodels.datasets.co2`, 1 week, 1 entity: Mauna Loa CO2 1958-2001 (2,284 weeks, 59
  of them missing: gaps that `ingest` interpolates).

For each: `tsops init --data` (the defaults derived from the frequency, as a user gets them),
`tsops ingest`, `tsops train` (default settings; `--quick` for the quick epochs). Printed per
model: MAE, RMSE, MASE, the ratio to the best statistical baseline's MAE, the interval
coverage on the holdout (where the model has intervals) and the fitting time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd


def taylor() -> pd.DataFrame:
    from pmdarima.datasets import load_taylor

    y = load_taylor(as_series=True).to_numpy(float)
    times = pd.date_range("2000-06-05", periods=len(y), freq="30min")
    return pd.DataFrame({"time": times, "demand": y})


def tmy() -> pd.DataFrame:
    import pvlib

    folder = Path(pvlib.__file__).parent / "data"
    frames = []
    for site, name in (("sand_point_ak", "703165TY.csv"), ("greensboro_nc", "723170TYA.CSV")):
        data, _ = pvlib.iotools.read_tmy3(str(folder / name), coerce_year=2001, map_variables=True)
        times = data.index.tz_localize(None)
        frames.append(pd.DataFrame({"site": site, "time": times, "temp": data["temp_air"].to_numpy()}))
    data, _ = pvlib.iotools.read_tmy2(str(folder / "12839.tm2"))
    times = pd.DatetimeIndex([t.replace(year=2001) for t in data.index.tz_localize(None)])
    frames.append(pd.DataFrame({"site": "miami_fl", "time": times, "temp": data["DryBulb"].to_numpy() / 10}))
    return pd.concat(frames, ignore_index=True)


def co2() -> pd.DataFrame:
    import statsmodels.api as sm

    data = sm.datasets.co2.load_pandas().data.dropna()  # the 59 missing weeks become gaps
    return pd.DataFrame({"time": data.index, "co2": data["co2"].to_numpy()})


def seattle() -> pd.DataFrame:
    from vega_datasets import data

    frame = data.seattle_weather()
    return pd.DataFrame({"time": pd.to_datetime(frame["date"]), "temp_max": frame["temp_max"].astype(float)})


DATASETS: dict[str, tuple[Callable[[], pd.DataFrame], str, str | None]] = {
    "taylor": (taylor, "demand", None),
    "tmy": (tmy, "temp", "site"),
    "seattle": (seattle, "temp_max", None),
    "co2": (co2, "co2", None),
}


def run_one(
    name: str, folder: Path, *, quick: bool, threads: int, overrides: dict[str, str] | None = None
) -> dict[str, object]:
    from tsops.features.ingest import ingest
    from tsops.models.pipeline import train
    from tsops.scaffold import init_from_data
    from tsops.settings import Project

    load, target, entity = DATASETS[name]
    frame = load()
    csv = folder / f"{name}.csv"
    frame.to_csv(csv, index=False)
    lines: list[str] = []
    init_from_data(
        folder / name,
        csv,
        time="time",
        target=target,
        entity=entity,
        on_defaults=lambda d: lines.extend(d.lines()),
    )
    env = {"TSOPS_MODEL__THREADS": str(threads), **(overrides or {})}
    project = Project.load(folder / name, environ=env)
    ingest(project, quiet=True)
    started = time.perf_counter()
    outcome = train(project, quick=quick, show_progress=False)
    total = time.perf_counter() - started
    report = outcome.report
    best, _ = report.best_baseline()
    statistical = [b for b in report.baselines if b in report.fit_seconds]
    best_stat = min(statistical, key=lambda b: report.overall[b]["mae"]) if statistical else best
    rows = []
    for model, m in sorted(report.overall.items(), key=lambda kv: kv[1]["mae"]):
        rows.append(
            {
                "model": model,
                **m,
                "ratio_to_best_statistical": m["mae"] / report.overall[best_stat]["mae"],
                "ratio_interval": report.ratio_interval(model, best_stat),
                **{f"coverage_{k}": v for k, v in report.coverage.get(model, {}).items()},
                **{f"coverage_{k}_interval": v for k, v in report.coverage_interval.get(model, {}).items()},
                "seconds": report.fit_seconds.get(model, outcome.lstm_seconds if model == "lstm" else 0.0),
            }
        )
    s = project.settings
    return {
        "dataset": name,
        "rows": len(frame),
        "entities": 1 if entity is None else int(frame[entity].nunique()),
        "freq": s.series.freq,
        "defaults": lines,
        "origins": report.origins,
        "epochs": outcome.epochs_run,
        "train_seconds_total": total,
        "best_baseline": best,
        "best_statistical": best_stat,
        "lstm_base": outcome.base,
        "lstm_base_mae": outcome.base_mae,
        "failures": report.failures,
        "resampled": report.draws is not None,
        "baselines_wall_seconds": outcome.baselines_seconds,
        "baseline_processes": outcome.baseline_processes,
        "lstm_seconds": outcome.lstm_seconds,
        "stretches": report.stretches,
        "models": rows,
    }


def markdown(result: dict) -> str:
    out = [
        f"### {result['dataset']} ({result['freq']}, {result['entities']} entities, {result['rows']} rows; "
        f"{result['origins']} origins, LSTM {result['epochs']} epochs, "
        f"`tsops train` {result['train_seconds_total']:.0f} s)",
        "",
        "| model | MAE | RMSE | MASE | MAE / best statistical | 80% coverage | 95% coverage | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["models"]:
        cov = [f"{r[k]:.1%}" if k in r else "" for k in ("coverage_80", "coverage_95")]
        if r.get("coverage_80_interval"):
            cov[0] += " ({:.0%}–{:.0%})".format(*r["coverage_80_interval"])
        spread = r.get("ratio_interval")
        ratio = f"{r['ratio_to_best_statistical']:.3f}" + (
            f" ({spread[0]:.3f}–{spread[1]:.3f})" if spread and spread[1] > spread[0] else ""
        )
        out.append(
            f"| {r['model']} | {r['mae']:.4g} | {r['rmse']:.4g} | {r['mase']:.3f} | "
            f"{ratio} | {cov[0]} | {cov[1]} | {r['seconds']:.1f} |"
        )
    out.append(
        "\nIn brackets: the central 90% over resampled origins (blocks of the origins one horizon spans)."
        if result["resampled"]
        else f"\nNo range: the origins span {result['stretches']} horizon(s), too few to resample."
    )
    out.append(f"\nThe network corrects {result['lstm_base']}: MAE {result['lstm_base_mae']:.4g} alone.")
    fits = sum(r["seconds"] for r in result["models"] if r["model"] in ("autoets", "autotheta", "mstl"))
    out.append(
        f"\nStatistical baselines: {fits:.1f} s of fits took {result['baselines_wall_seconds']:.1f} s in "
        f"{result['baseline_processes']} process(es); the LSTM trained in {result['lstm_seconds']:.1f} s."
    )
    for f in result["failures"]:
        out.append(f"\n- {f}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--quick", action="store_true", help="the quick epochs (model.quick_epochs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the LSTM")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TSOPS_SECTION__FIELD=VALUE",
        help="a settings override for every dataset (repeatable), e.g. TSOPS_MODEL__BASE=seasonal",
    )
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import warnings

    warnings.filterwarnings("ignore")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            overrides = dict(item.split("=", 1) for item in args.set)
            result = run_one(name, Path(tmp), quick=args.quick, threads=args.threads, overrides=overrides)
            results.append(result)
            print(markdown(result), flush=True)
            print(flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))
    print(
        "| dataset | LSTM MAE / best statistical baseline | 90% over resampled origins | LSTM 80% coverage |"
    )
    print("|---|---:|---:|---:|")
    for r in results:
        lstm = next(m for m in r["models"] if m["model"] == "lstm")
        spread = "{:.3f}–{:.3f}".format(*lstm["ratio_interval"]) if lstm["ratio_interval"] else "–"
        cov = f"{lstm['coverage_80']:.1%}" if "coverage_80" in lstm else "–"
        if lstm.get("coverage_80_interval"):
            cov += " ({:.0%}–{:.0%})".format(*lstm["coverage_80_interval"])
        print(
            f"| {r['dataset']} | {lstm['ratio_to_best_statistical']:.3f} ({r['best_statistical']}) | "
            f"{spread} | {cov} |"
        )
    np.set_printoptions()


if __name__ == "__main__":
    main()
