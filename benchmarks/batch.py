"""Batch benchmark: `tsops batch` side by side with the plain approach, in one run.

    .venv/bin/python benchmarks/batch.py [--sizes 1000000,10000000] [--formats parquet,csv]
                                         [--lstm-rows 100000] [--lstm-threads 1,2] [--lstm-chunk-rows 10000]
                                         [--repeat 1] [--project DIR] [--work DIR] [--json FILE]

The plain approach is the script teams already have: read the whole file with pandas,
`mlflow.pyfunc.load_model(uri).predict(frame)`, add the predictions, write with pandas.
Each approach runs in its own child process (`python -c ...` and `python -m tsops batch`),
on the same input file and the same MLflow model; the parent takes the wall time and the
child's peak RSS (`os.wait4` rusage, ru_maxrss). Models:
  * scikit-learn LinearRegression on 10 float columns (saved as an MLflow model folder),
    on `--sizes` rows, for each of `--formats`;
  * the tsops LSTM champion of a weather project (created, ingested, trained quickly and
    promoted in `--work` unless `--project` is given) on `--lstm-rows` feature rows, with
    tsops' `threads:` at each of `--lstm-threads` and `chunk_rows: --lstm-chunk-rows` (the
    plain approach runs again for each).
With `--repeat N` each approach runs N times, alternating which goes first; medians and
bests are printed. Prints rows/s, peak RSS and the ratios of wall time and of work time (read,
predict, write: without interpreter start-up, imports and model loading).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

FEATURES = [f"x{i}" for i in range(10)]
GENERATE_ROWS = 1_000_000  # inputs are written in slices of this many rows

PLAIN = """
import json, sys, time
started = time.perf_counter()
import pandas as pd, mlflow
src, dst, uri, tracking, keep = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
if tracking:
    mlflow.set_tracking_uri(tracking); mlflow.set_registry_uri(tracking)
t0 = time.perf_counter()
df = pd.read_csv(src) if src.endswith(".csv") else pd.read_parquet(src)
t1 = time.perf_counter()
model = mlflow.pyfunc.load_model(uri)
t2 = time.perf_counter()
pred = model.predict(df)
t3 = time.perf_counter()
if isinstance(pred, pd.DataFrame):
    out = pd.concat([df[keep.split(",")] if keep else df, pred.set_index(df.index)], axis=1)
else:
    out = df[keep.split(",")] if keep else df
    out["prediction"] = pred
if dst.endswith(".csv"):
    out.to_csv(dst, index=False)
else:
    out.to_parquet(dst, index=False)
t4 = time.perf_counter()
print(json.dumps({"read": t1 - t0, "load_model": t2 - t1, "predict": t3 - t2, "write": t4 - t3,
                  "imports": t0 - started}))
"""


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall seconds and peak RSS (MB) of one child process, and its stdout."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def sklearn_model(work: Path) -> Path:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    path = work / "sk-linear"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(5000, len(FEATURES))), columns=FEATURES)
    y = x.to_numpy() @ np.linspace(-2, 2, len(FEATURES)) + rng.normal(scale=0.1, size=len(x))
    model = LinearRegression().fit(x, y)
    mlflow.sklearn.save_model(
        model, str(path), signature=infer_signature(x.head(), model.predict(x.head())), pip_requirements=[]
    )
    return path


def write_inputs(work: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    """`rows` rows of 10 float columns and an id, in each format, written slice by slice."""
    paths = {fmt: work / f"in-{rows}.{fmt}" for fmt in formats}
    todo = {fmt: p for fmt, p in paths.items() if not p.exists()}
    if not todo:
        return paths
    rng = np.random.default_rng(rows)
    writers: dict[str, Any] = {}
    for start in range(0, rows, GENERATE_ROWS):
        n = min(GENERATE_ROWS, rows - start)
        values = rng.normal(size=(n, len(FEATURES)))
        columns = {name: values[:, i] for i, name in enumerate(FEATURES)}
        batch = pa.RecordBatch.from_pydict({**columns, "id": np.arange(start, start + n)})
        for fmt, path in todo.items():
            if fmt not in writers:
                tmp = path.with_name(path.name + ".tmp")
                writers[fmt] = (
                    pq.ParquetWriter(tmp, batch.schema)
                    if fmt == "parquet"
                    else pacsv.CSVWriter(tmp, batch.schema)
                )
            writers[fmt].write_batch(batch)
    for fmt, writer in writers.items():
        writer.close()
        os.replace(todo[fmt].with_name(todo[fmt].name + ".tmp"), todo[fmt])
    return paths


def weather_project(work: Path, given: Path | None) -> Path:
    if given:
        return given
    root = work / "weather"
    if (root / ".tsops" / "mlflow.db").exists():
        return root
    from tsops.features.ingest import ingest
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train
    from tsops.scaffold import init_example

    project = init_example(root, "weather")
    ingest(project, quiet=True)
    train(project, quick=True, show_progress=False)
    promote(project, force=True)
    return root


def lstm_inputs(work: Path, root: Path, rows: int) -> Path:
    """Feature rows of the weather project's offline store, repeated to `rows` rows."""
    import pandas as pd

    from tsops.features.store import FeatureStoreClient
    from tsops.settings import Project

    path = work / f"lstm-{rows}.parquet"
    if path.exists():
        return path
    client = FeatureStoreClient(Project.load(root))
    series = client.project.settings.series
    frame = client.read_offline().dropna(subset=client.features.names)
    frame = frame[[series.entity_col, series.time, *client.features.names]]
    reps = -(-rows // len(frame))
    pd.concat([frame] * reps, ignore_index=True).head(rows).to_parquet(path, index=False)
    return path


def tsops_job(work: Path, name: str, source: Path, target: Path, model: dict, **extra: Any) -> Path:
    fmt = source.suffix.lstrip(".")
    job = {
        "model": model,
        "data": {
            "source": {"type": fmt, "params": {"path": str(source)}},
            "target": {"type": target.suffix.lstrip("."), "params": {"path": str(target)}},
        },
        **extra,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _work_seconds(approach: str, stdout: str) -> float:
    """The work itself, without interpreter start-up, imports and model loading: both load
    the same MLflow model the same way, and on a loaded machine that part varies the most."""
    last = json.loads(stdout.strip().splitlines()[-1])
    if approach == "plain":
        return float(last["read"] + last["predict"] + last["write"])
    return float(last["seconds"])


def compare(
    label: str, rows: int, plain_cmd: list[str], tsops_cmd: list[str], outputs: list[Path], repeat: int
) -> dict:
    """Both approaches `repeat` times, alternating which goes first; medians and bests."""
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "tsops": []}
    for i in range(repeat):
        order = [("plain", plain_cmd), ("tsops", tsops_cmd)]
        for approach, cmd in order if i % 2 == 0 else order[::-1]:
            result = measure(cmd, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
            result["work_s"] = _work_seconds(approach, result["stdout"])
            result["load"] = os.getloadavg()[0]
            runs[approach].append(result)
            for out in outputs:  # keep the disk tidy between runs
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)

    def stat(approach: str, key: str, how: Any) -> float:
        return float(how([r[key] for r in runs[approach]]))

    row: dict[str, Any] = {"case": label, "rows": rows, "repeat": repeat}
    for approach in runs:
        row[f"{approach}_wall_median_s"] = stat(approach, "seconds", np.median)
        row[f"{approach}_wall_best_s"] = stat(approach, "seconds", min)
        row[f"{approach}_work_median_s"] = stat(approach, "work_s", np.median)
        row[f"{approach}_work_best_s"] = stat(approach, "work_s", min)
        row[f"{approach}_rss_mb"] = stat(approach, "rss_mb", max)
        row[f"{approach}_rows_s"] = rows / row[f"{approach}_wall_median_s"]
    row["plain_breakdown"] = json.loads(runs["plain"][0]["stdout"].strip().splitlines()[-1])
    row["wall_speedup"] = row["plain_wall_median_s"] / row["tsops_wall_median_s"]
    row["work_speedup"] = row["plain_work_median_s"] / row["tsops_work_median_s"]
    row["work_speedup_best"] = row["plain_work_best_s"] / row["tsops_work_best_s"]
    row["load_avg"] = [round(r["load"], 1) for r in runs["plain"] + runs["tsops"]]
    print(
        f"{label:<34} {rows:>11,} | plain {row['plain_rows_s']:>9,.0f} rows/s {row['plain_rss_mb']:>6,.0f} MB"
        f" | tsops {row['tsops_rows_s']:>9,.0f} rows/s {row['tsops_rss_mb']:>6,.0f} MB"
        f" | wall {row['wall_speedup']:.2f}× | work {row['plain_work_median_s']:.1f} s vs"
        f" {row['tsops_work_median_s']:.1f} s: {row['work_speedup']:.2f}×"
        f" (best {row['work_speedup_best']:.2f}×)"
        f" | load {row['load_avg']}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="rows for the scikit-learn model")
    parser.add_argument("--formats", default="parquet,csv", help="input and output formats")
    parser.add_argument("--lstm-rows", type=int, default=100_000, help="feature rows for the LSTM (0: skip)")
    parser.add_argument("--lstm-threads", default="1,2", help="tsops `threads:` for the LSTM runs")
    parser.add_argument(
        "--lstm-chunk-rows", type=int, default=10_000, help="LSTM chunk_rows (threads need several chunks)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each approach (medians, bests)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="tsops chunk_rows (default: the job's)")
    parser.add_argument("--project", type=Path, help="a trained, promoted tsops project (LSTM)")
    parser.add_argument("--work", type=Path, help="folder for inputs and models (kept for reruns)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="tsops-batch-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    extra = {"chunk_rows": args.chunk_rows} if args.chunk_rows else {}
    python = sys.executable
    print(f"work folder {work}; {os.cpu_count()} CPUs", flush=True)
    print(
        f"{'case':<34} {'rows':>11} | plain: rows/s (median wall), peak RSS | tsops: the same | wall ratio"
        " | work time (no start-up or model load), median ratio (best) | 1-min load averages",
        flush=True,
    )
    results = []
    model = sklearn_model(work)
    formats = args.formats.split(",")
    for rows in (int(s) for s in args.sizes.split(",") if s):
        inputs = write_inputs(work, rows, formats)
        for fmt, src in inputs.items():
            plain_out, tsops_out = work / f"plain-out.{fmt}", work / f"tsops-out.{fmt}"
            job = tsops_job(work, f"sk-{fmt}", src, tsops_out, {"uri": str(model)}, **extra)
            results.append(
                compare(
                    f"scikit-learn linear, {fmt}",
                    rows,
                    [python, "-c", PLAIN, str(src), str(plain_out), str(model), "", ""],
                    [python, "-m", "tsops", "batch", "--config", str(job), "--json"],
                    [plain_out, tsops_out],
                    args.repeat,
                )
            )
    if args.lstm_rows:
        from tsops.settings import Project

        root = weather_project(work, args.project)
        project = Project.load(root)
        src = lstm_inputs(work, root, args.lstm_rows)
        uri = f"models:/{project.settings.model.name}@champion"
        series = project.settings.series
        keep = [series.entity_col, series.time]
        plain_out, tsops_out = work / "plain-lstm.parquet", work / "tsops-lstm.parquet"
        for threads in (int(t) for t in args.lstm_threads.split(",")):
            job = tsops_job(
                work,
                f"lstm-{threads}",
                src,
                tsops_out,
                {"uri": uri, "tracking_uri": project.tracking_uri},
                keep=keep,
                threads=threads,
                **{"chunk_rows": args.lstm_chunk_rows, **extra},
            )
            results.append(
                compare(
                    f"tsops LSTM, parquet, threads {threads}",
                    args.lstm_rows,
                    [
                        python,
                        "-c",
                        PLAIN,
                        str(src),
                        str(plain_out),
                        uri,
                        project.tracking_uri,
                        ",".join(keep),
                    ],
                    [python, "-m", "tsops", "batch", "--config", str(job), "--json"],
                    [plain_out, tsops_out],
                    args.repeat,
                )
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
