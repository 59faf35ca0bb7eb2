"""Scaling benchmark: what each part costs as the number of entities grows, one size per row.

    .venv/bin/python benchmarks/scaling.py [--entities 50,1000,10000,100000] [--history 48]
        [--events 200000] [--requests 2000] [--skip-redis] [--out results.json]
        [--keep] [--champion DIR]

One champion is trained once (quick) on a 50-entity synthetic project with a compact feature
set (`FEATURES`: a window of 24, a rolling mean/std over 24, hour and day-of-week: lookback
24, so that 100,000 entities' history fits in memory); then for each size N a project with the
same features and the same tracking store (so the same champion) gets N synthetic entities of
`--history` steps each, and:

* **ingest**: `tsops ingest` of the N × history rows (SQLite online store), µs per row;
* **stream worker**: one `tsops stream` worker process (file source) consumes `--events`
  events spread over all N entities (each time step, every entity once; at least two steps)
  as fast as it can: events/s; its resident memory once it has seen every entity (the
  per-entity cost is RSS(N) − RSS(first size), over N − first size); the checkpoint's store
  writes per event (`tsops_stream_checkpoint_seconds`, summed, over the events); the monitor's
  pending forecasts (rows and the bytes of their arrays);
* **serving**: `tsops serve`, `GET /forecast/{entity}` for random entities, one client,
  `--requests` requests: p50 and p99, on the SQLite online store and (unless `--skip-redis`)
  on Redis (a throw-away `redis-server`, the project re-ingested into it);
* **status and dashboard**: `tsops status --json` wall time (a fresh process, as a user runs
  it), and the served dashboard's `/`, `/ui/overview` and `/ui/entities` (first request: the
  dashboard loads the stores; then the median of 5).

Prints one row per size and the ratios to the first size's row; `--out` writes the figures as
JSON. Runs take about 2, 4, 13 and 60 minutes at 50, 1,000, 10,000 and 100,000 entities on a
loaded 2-core machine (training the champion 4 more; `--skip-redis` saves half of the last).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import http.client
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import RedisServer, free_port  # noqa: E402
from tsops.settings import Project  # noqa: E402

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
FEATURES = {"window": 24, "lags": [], "rolling": [24], "calendar": ["hour", "dayofweek"]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- projects -----------------------------------------------------------------------------------


def train_champion(folder: Path) -> Project:
    """The one champion every size serves: 50 entities, 30 days, compact features, quick."""
    from tsops.features.ingest import ingest
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train
    from tsops.scaffold import init_example

    root = folder / "champion"
    init_example(root, "synthetic", entities=50)
    raw = yaml.safe_load((root / "tsops.yaml").read_text())
    raw["features"] = dict(FEATURES)
    raw["model"].update(quick_epochs=1, season=[24])
    raw["backtest"] = {"holdout": 168, "stride": 24, "baseline_window": 168}
    (root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    project = Project.load(root, environ={})
    ingest(project, quiet=True)
    train(project, quick=True, show_progress=False)
    promote(project)
    return project


def sized_project(folder: Path, champion: Project, entities: int, history: int) -> Project:
    """A project of `entities` synthetic series of `history` steps on the champion's store."""
    from tsops.data.synthetic import SyntheticSpec, generate

    root = folder / f"n{entities}"
    (root / "data").mkdir(parents=True)
    raw = yaml.safe_load((champion.root / "tsops.yaml").read_text())
    raw["data"]["synthetic"].update(entities=entities, periods=history)
    raw["tracking"] = {"uri": champion.tracking_uri}
    (root / "tsops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = SyntheticSpec(entities=entities, start=raw["data"]["synthetic"]["start"], periods=history)
    generate(spec).to_parquet(root / "data" / "history.parquet", index=False)
    return Project.load(root, environ={})


def write_events(project: Project, count: int, path: Path) -> int:
    """The series' continuation, time step by time step over every entity: at least two steps."""
    from tsops.data.synthetic import SyntheticSpec, generate_range

    syn = project.settings.data.synthetic
    assert syn is not None
    spec = SyntheticSpec(entities=syn.entities, start=syn.start, periods=syn.periods, seed=syn.seed)
    steps = max(2, -(-count // syn.entities))
    frame = generate_range(spec, syn.periods, syn.periods + steps).sort_values(
        ["timestamp", "entity_id"], kind="stable"
    )
    times = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy()
    with path.open("w") as out:
        for e, t, v in zip(frame["entity_id"].to_numpy(), times, frame["value"].tolist(), strict=True):
            out.write(f'{{"entity_id":"{e}","timestamp":"{t}","value":{v!r}}}\n')
    return len(frame)


# -- the stream worker (a child process: its memory is its own) --------------------------------


def worker_main(root: str, events: str, count: int) -> None:
    """In the child: one worker over the event file; prints its figures as one JSON line."""
    from tsops.monitoring.monitor import StreamMonitor
    from tsops.streaming.metrics import StreamMetrics
    from tsops.streaming.runner import run_stream

    project = Project.load(Path(root))
    metrics = StreamMetrics()
    monitor = StreamMonitor(project, registry=metrics.registry)
    process = psutil.Process()
    summary = run_stream(
        project, source=f"file:{events}", follow=True, max_events=count, metrics=metrics, monitor=monitor
    )
    rss = process.memory_info().rss  # every entity seen; before the monitor and sinks close
    # The same once the allocator has handed back what it holds free: what the worker's
    # objects take, without the heap's slack (temporaries of the last batches).
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss_trimmed = process.memory_info().rss
    tracker = monitor.accuracy
    pending_rows = tracker.pending_count
    pending_bytes = sum(p.nbytes for p in tracker.pending.values())
    monitor.close()
    sample = metrics.registry.get_sample_value
    out = {
        "summary": summary.as_dict(),
        "rss": rss,
        "rss_trimmed": rss_trimmed,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "state_entities": sample("tsops_stream_state_entities"),
        "checkpoint_seconds": sample("tsops_stream_checkpoint_seconds_sum"),
        "checkpoints": sample("tsops_stream_checkpoint_seconds_count"),
        "pending_rows": pending_rows,
        "pending_bytes": pending_bytes,
    }
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(project: Project, events: Path, count: int, logfile: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", str(project.root), str(events), str(count)]
    with logfile.open("w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"stream worker failed ({done.returncode}):\n{logfile.read_text()[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def monitor_steady(entities: int, horizon: int, batch: int = 5000) -> dict[str, float]:
    """The monitor's accuracy join in steady state: every entity has its horizon pending
    forecasts (two interval levels) and horizon + 1 done ones; µs per event of the last steps'
    micro-batches (actuals joined, forecasts added, done and expired ones dropped) and the
    pending arrays' bytes per entity (capacity, key index and done keys included)."""
    import pandas as pd

    from tsops.data.synthetic import entity_ids
    from tsops.monitoring.accuracy import AccuracyTracker
    from tsops.records import Event

    tracker = AccuracyTracker(horizon, pd.Timedelta("1h"), 500, [80, 95])
    ids, t0 = entity_ids(entities), pd.Timestamp("2024-01-01")
    row = [float(h) for h in range(horizon)]
    band = {"lower": row, "upper": row}
    steps = 2 * horizon + 4
    timed: list[float] = []
    for k in range(steps):
        when = t0 + pd.Timedelta(hours=k)
        stamp = when.isoformat()
        for i in range(0, entities, batch):
            chunk = ids[i : i + batch]
            events = [Event(e, when, float(k)) for e in chunk]
            records = [
                {"entity": e, "event_time": stamp, "model_version": 1, "values": row,
                 "intervals": {"80": band, "95": band}}
                for e in chunk
            ]  # fmt: skip
            started = time.perf_counter()
            tracker.add_actuals(events)  # type: ignore[arg-type]
            tracker.add_forecasts(records)  # type: ignore[arg-type]
            if k >= steps - 2:
                timed.append((time.perf_counter() - started) / len(chunk))
    held = sum(p.nbytes for p in tracker.pending.values())
    return {
        "us_per_event": float(np.mean(timed)) * 1e6,
        "pending": tracker.pending_count,
        "bytes_per_entity": held / entities,
    }


# -- serving, status, dashboard ---------------------------------------------------------------


def start_server(project: Project, env: dict[str, str], logfile: Path, stack: ExitStack) -> int:
    """`tsops serve` on a free port, started and awaited as benchmarks/serving.py does."""
    from serving import start  # benchmarks/serving.py: its folder is this script's sys.path[0]

    port = free_port()
    code = (
        "import sys; from pathlib import Path; from tsops.serving.command import serve; "
        "serve(Path(sys.argv[1]), port=int(sys.argv[2]))"
    )
    start([sys.executable, "-c", code, str(project.root), str(port)], env, logfile, port, stack)
    return port


def getter(port: int, timeout: float = 600) -> Callable[[str], tuple[int, bytes]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def get(path: str) -> tuple[int, bytes]:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()

    return get


def forecast_latency(port: int, entities: int, requests: int) -> dict[str, float]:
    """`GET /forecast/{entity}` for random entities, one client: p50 and p99 in ms."""
    from tsops.data.synthetic import entity_ids

    ids = entity_ids(entities)
    rng = random.Random(7)
    get = getter(port)
    samples = []
    for i in range(requests + 50):
        entity = ids[rng.randrange(entities)]
        started = time.perf_counter()
        status, body = get(f"/forecast/{entity}")
        if status != 200:
            raise RuntimeError(f"/forecast/{entity}: {status} {body[:300]!r}")
        if i >= 50:  # the first ones warm up
            samples.append((time.perf_counter() - started) * 1000)
    a = np.asarray(samples)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def dashboard_times(port: int) -> dict[str, dict[str, float]]:
    """ms of the first request (the dashboard loads what it shows) and the median of 5 after."""
    get = getter(port)
    out = {}
    for path in ("/", "/ui/overview", "/ui/entities"):
        times = []
        for _ in range(6):
            started = time.perf_counter()
            status, body = get(path)
            times.append((time.perf_counter() - started) * 1000)
            if status == 503:  # still loading: the first figure is how long that took
                deadline = time.time() + 600
                while status == 503 and time.time() < deadline:
                    time.sleep(0.2)
                    status, body = get(path)
                times[-1] = (time.perf_counter() - started) * 1000
            if status != 200:
                raise RuntimeError(f"{path}: {status} {body[:300]!r}")
        out[path] = {"first": times[0], "median": statistics.median(times[1:])}
    return out


def status_seconds(project: Project) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "tsops"), "status", "-p", str(project.root), "--json"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


# -- one size -----------------------------------------------------------------------------------


def measure(
    folder: Path, champion: Project, row: dict[str, Any], args: argparse.Namespace, save: Callable[[], None]
) -> None:
    """Fill `row` for `row["entities"]` entities, calling `save` after each step."""
    from tsops.features.ingest import ingest

    n = row["entities"]
    log(f"N={n:,}: writing the project ({args.history} steps per entity)")
    project = sized_project(folder, champion, n, args.history)
    started = time.perf_counter()
    result = ingest(project, quiet=True)
    seconds = time.perf_counter() - started
    row["ingest"] = {
        "rows": result.offline_rows,
        "seconds": seconds,
        "us_per_row": seconds / result.offline_rows * 1e6,
    }
    log(f"N={n:,}: ingested {result.offline_rows:,} rows in {seconds:.1f} s")
    save()

    events = folder / f"events-{n}.jsonl"
    count = write_events(project, args.events, events)
    log(f"N={n:,}: stream worker over {count:,} events")
    worker = run_worker(project, events, count, folder / f"worker-{n}.log")
    s = worker["summary"]
    row["stream"] = {
        "events": s["consumed"],
        "predictions": s["predictions"],
        "ev_s": s["events_per_second"],
        "rss": worker["rss"],
        "rss_trimmed": worker["rss_trimmed"],
        "peak_rss": worker["peak_rss"],
        "state_entities": worker["state_entities"],
        "checkpoints": worker["checkpoints"],
        "checkpoint_us_per_event": worker["checkpoint_seconds"] / max(1, s["consumed"]) * 1e6,
        "pending_rows": worker["pending_rows"],
        "pending_bytes": worker["pending_bytes"],
    }
    log(f"N={n:,}: {s['events_per_second']:,.0f} ev/s, RSS {worker['rss'] / 2**20:.0f} MiB")
    save()
    if n <= args.monitor_max:
        log(f"N={n:,}: the monitor in steady state")
        row["monitor"] = monitor_steady(n, project.settings.model.horizon)
        save()

    with ExitStack() as stack:
        port = start_server(project, {}, folder / f"serve-{n}.log", stack)
        log(f"N={n:,}: /forecast on SQLite, {args.requests} requests")
        row["forecast_sqlite"] = forecast_latency(port, n, args.requests)
        log(f"N={n:,}: dashboard")
        row["dashboard"] = dashboard_times(port)
    save()
    log(f"N={n:,}: tsops status")
    row["status_s"] = status_seconds(project)
    save()
    if not args.skip_redis:
        with ExitStack() as stack:
            redis = RedisServer().start()
            stack.callback(redis.stop)
            env = {
                "TSOPS_STORES__ONLINE__TYPE": "redis",
                "TSOPS_STORES__ONLINE__CONNECTION_STRING": f"{redis.host}:{redis.port}",
            }
            on_redis = Project.load(project.root, environ={**os.environ, **env})
            log(f"N={n:,}: ingest into Redis")
            started = time.perf_counter()
            ingest(on_redis, quiet=True)
            row["ingest_redis_s"] = time.perf_counter() - started
            port = start_server(project, env, folder / f"serve-redis-{n}.log", stack)
            log(f"N={n:,}: /forecast on Redis, {args.requests} requests")
            row["forecast_redis"] = forecast_latency(port, n, args.requests)
    save()


# -- report -------------------------------------------------------------------------------------


COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], float | None]]] = [
    ("ingest µs/row", "{:.1f}", lambda r: r["ingest"]["us_per_row"]),
    ("stream ev/s", "{:,.0f}", lambda r: r["stream"]["ev_s"]),
    ("RSS MiB", "{:,.0f}", lambda r: r["stream"]["rss"] / 2**20),
    ("ckpt µs/ev", "{:.1f}", lambda r: r["stream"]["checkpoint_us_per_event"]),
    ("pending MiB", "{:.1f}", lambda r: r["stream"]["pending_bytes"] / 2**20),
    ("monitor µs/ev", "{:.1f}", lambda r: r.get("monitor", {}).get("us_per_event")),
    (
        "monitor KiB/ent",
        "{:.1f}",
        lambda r: (r.get("monitor", {}).get("bytes_per_entity") or 0) / 1024 or None,
    ),
    ("sqlite p50", "{:.2f}", lambda r: r["forecast_sqlite"]["p50"]),
    ("sqlite p99", "{:.2f}", lambda r: r["forecast_sqlite"]["p99"]),
    ("redis p50", "{:.2f}", lambda r: r.get("forecast_redis", {}).get("p50")),
    ("redis p99", "{:.2f}", lambda r: r.get("forecast_redis", {}).get("p99")),
    ("status s", "{:.2f}", lambda r: r["status_s"]),
    ("dash 1st ms", "{:,.0f}", lambda r: max(d["first"] for d in r["dashboard"].values())),
    ("dash ms", "{:.1f}", lambda r: max(d["median"] for d in r["dashboard"].values())),
]


def report(rows: list[dict[str, Any]]) -> None:
    names = [name for name, _, _ in COLUMNS]
    print()
    print("| entities | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    first = rows[0]
    for row in rows:
        cells = []
        for _, fmt, get in COLUMNS:
            value, base = get(row), get(first)
            text = "–" if value is None else fmt.format(value)
            if row is not first and value is not None and base:
                text += f" ({value / base:.2f}×)"
            cells.append(text)
        print(f"| {row['entities']:,} | " + " | ".join(cells) + " |")
    print(
        "\n(×: the ratio to the first row; p50/p99 in ms; dash: the slowest of /, /ui/overview, /ui/entities)"
    )
    for row in rows[1:]:
        extra = row["entities"] - first["entities"]
        per = (row["stream"]["rss"] - first["stream"]["rss"]) / extra
        trimmed = (row["stream"]["rss_trimmed"] - first["stream"]["rss_trimmed"]) / extra
        pending = (row["stream"]["pending_bytes"] - first["stream"]["pending_bytes"]) / extra
        print(
            f"N={row['entities']:,}: worker memory {per / 1024:.1f} KiB per extra entity (goal ≤ 20 KB; "
            f"{trimmed / 1024:.1f} KiB once the allocator's free memory is trimmed), of which the "
            f"monitor's pending forecasts {pending / 1024:.1f} KiB "
            f"({row['stream']['pending_rows']:,} pending)"
        )
    last = rows[-1]
    ratio = last["stream"]["ev_s"] / first["stream"]["ev_s"]
    p99 = last["forecast_sqlite"]["p99"] / first["forecast_sqlite"]["p99"]
    print(
        f"{last['entities']:,} vs {first['entities']:,} entities: throughput {ratio:.2f}× (goal ≥ 0.67×), "
        f"/forecast p99 on SQLite {p99:.2f}× (goal ≤ 1.5×)",
        end="",
    )
    if "forecast_redis" in last and "forecast_redis" in first:
        print(f", on Redis {last['forecast_redis']['p99'] / first['forecast_redis']['p99']:.2f}×")
    else:
        print()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--entities",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[50, 1000, 10_000, 100_000],
        help="sizes to measure, comma-separated (ratios are to the first)",
    )
    parser.add_argument("--history", type=int, default=48, help="steps of history per entity")
    parser.add_argument(
        "--events", type=int, default=200_000, help="events the worker consumes (≥ 2 per entity)"
    )
    parser.add_argument("--requests", type=int, default=2000, help="/forecast requests per store")
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument(
        "--monitor-max",
        type=int,
        default=20_000,
        help="largest size to hold the monitor's steady state for (about 1 KB per pending forecast, "
        "horizon of them per entity: 3 GB at 100,000 entities)",
    )
    parser.add_argument("--champion", type=Path, help="a champion project this benchmark trained (--keep)")
    parser.add_argument("--keep", action="store_true", help="keep the projects (the folder is printed)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="tsops-bench-scaling-"))
    if args.champion:
        champion = Project.load(args.champion, environ={})
    else:
        log(f"training the champion (quick) in {folder}")
        champion = train_champion(folder)
    rows: list[dict[str, Any]] = []

    def save() -> None:  # what is measured so far survives a later step failing
        if args.out:
            args.out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))

    try:
        for n in args.entities:
            rows.append({"entities": n})
            measure(folder, champion, rows[-1], args, save)
    finally:
        done = [r for r in rows if "status_s" in r]
        if done:
            report(done)
        if not args.keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"projects in {folder}")


if __name__ == "__main__":
    main()
