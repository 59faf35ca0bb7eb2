"""Dashboard benchmark, two questions side by side in one run.

    .venv/bin/python benchmarks/dashboard.py [--project DIR] [--records 100000] [--duration 10] [--rounds 3]

1. What one refresh of the stream files costs: the dashboard's incremental tail (read what was
   appended since the last second) against what a simple dashboard does, re-reading the whole
   prediction file every second. A file of `--records` prediction records (the stream's JSONL
   format, horizon 24) gets 500 new records between refreshes; both readers parse the records
   and keep the latest per entity.
2. Whether a watched dashboard slows serving: `tsops serve` in its own process, `wrk` on
   `GET /forecast/{entity}` (concurrency 8) with nobody watching, then with two dashboards open
   (two `/ui/events` streams) while a writer appends 500 prediction records per second to the
   sink the dashboard tails; the two alternate for `--rounds` rounds. Prints req/s and wrk's
   latency percentiles of every run, and the ratios of the medians.

Without `--project` a small synthetic project is created, ingested, trained (quick) and promoted
in a temporary folder first. Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import free_port, wait_for_http  # noqa: E402
from tsops.settings import Project  # noqa: E402
from tsops.ui.series import EntitySeries  # noqa: E402
from tsops.ui.tails import INITIAL_BYTES, JsonlTail  # noqa: E402

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
APPEND_PER_S = 500


def prepare_project(folder: Path) -> Project:
    from conftest import write_synthetic_project  # type: ignore[import-not-found]
    from tsops.features.ingest import ingest
    from tsops.lifecycle.promotion import promote
    from tsops.models.pipeline import train

    project = write_synthetic_project(folder / "proj")
    ingest(project, quiet=True)
    train(project, quick=True, show_progress=False)
    promote(project)
    return project


def records(start: int, n: int, entities: int = 50) -> str:
    """`n` prediction records in the stream's JSONL format, from record number `start`."""
    rng = np.random.default_rng(start)
    lines = []
    for i in range(start, start + n):
        entity, step = f"e{i % entities:03d}", i // entities
        t = np.datetime64("2024-05-01T00:00:00") + np.timedelta64(step, "h")
        targets = [str(t + np.timedelta64(h, "h")) for h in range(1, 25)]
        lines.append(
            json.dumps(
                {
                    "key": f"{entity}|{t}|1",
                    "entity": entity,
                    "event_time": str(t),
                    "target_times": targets,
                    "values": rng.normal(100, 10, 24).round(6).tolist(),
                    "model": "synthetic",
                    "model_version": 1,
                    "latency_ms": 3.2,
                }
            )
        )
    return "\n".join(lines) + "\n"


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def refresh_cost(folder: Path, total: int, rounds: int = 20) -> None:
    path = folder / "predictions.jsonl"
    path.write_text(records(0, total))
    size_mb = path.stat().st_size / 1e6
    tail, held = JsonlTail(path), EntitySeries(168, 3600 * 10**9)
    started = time.perf_counter()
    held.add_forecasts(tail.read().records)  # the first read: the file's last 16 MB (INITIAL_BYTES)
    first = time.perf_counter() - started
    incremental, naive = [], []
    written = total
    for _ in range(rounds):
        with path.open("a") as f:
            f.write(records(written, APPEND_PER_S))
        written += APPEND_PER_S
        gc.collect()  # neither reader pays for the other's garbage
        t0 = time.perf_counter()
        held.add_forecasts(tail.read().records)
        incremental.append(time.perf_counter() - t0)
        gc.collect()
        t0 = time.perf_counter()
        fresh = EntitySeries(168, 3600 * 10**9)
        with path.open("rb") as f:
            fresh.add_forecasts(json.loads(line) for line in f if line.strip())
        naive.append(time.perf_counter() - t0)
    inc, nai = percentiles(incremental), percentiles(naive)
    print(
        f"\n## 1. One refresh of a {size_mb:.0f} MB prediction file "
        f"({total:,} records, +{APPEND_PER_S} per refresh)"
    )
    print(
        f"first read (once, at start: the last {INITIAL_BYTES >> 20} MB of the file): {first * 1000:.0f} ms"
    )
    print(f"{'reader':<34}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    print(f"{'incremental tail (tsops)':<34}{inc['p50']:>10.2f}{inc['p95']:>10.2f}{inc['p99']:>10.2f}")
    print(f"{'re-read the whole file':<34}{nai['p50']:>10.1f}{nai['p95']:>10.1f}{nai['p99']:>10.1f}")
    print(f"re-read / incremental (p50): {nai['p50'] / inc['p50']:.0f}x")


def wrk(url: str, duration: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t2", "-c8", f"-d{duration}s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", out, re.M))

    def ms(text: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, **{f"p{k}": ms(v) for k, v in dist.items()}}


def watched_serving(project: Project, duration: int, rounds: int) -> None:
    port = free_port()
    url = f"http://{HOST}:{port}"
    log = open(project.root / "bench-serve.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "tsops"), "serve", "--project", str(project.root), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    try:
        wait_for_http("tsops serve", f"{url}/ping", proc, (project.root / "bench-serve.log").read_text, 180)
        entity = httpx.get(f"{url}/ui/entities", timeout=30).json()["entities"][0]
        target = f"{url}/forecast/{entity}"
        wrk(target, 2)  # warm up

        def watch() -> None:
            with httpx.stream("GET", f"{url}/ui/events", timeout=None) as r:
                for _ in r.iter_lines():
                    if stop.is_set():
                        return

        def append() -> None:
            sink = project.state_dir / "predictions.jsonl"
            n = 0
            while not stop.is_set():
                with sink.open("a") as f:
                    f.write(records(10_000_000 + n, APPEND_PER_S // 4, entities=5))
                n += APPEND_PER_S // 4
                stop.wait(0.25)

        results: dict[str, list[dict[str, Any]]] = {"alone": [], "watched": []}
        for _ in range(rounds):  # alternate, so a change in the machine's load hits both alike
            results["alone"].append(wrk(target, duration))
            stop.clear()
            threads = [threading.Thread(target=f, daemon=True) for f in (watch, watch, append)]
            for t in threads:
                t.start()
            time.sleep(3)  # the feed thread is running, both streams receive updates
            results["watched"].append(wrk(target, duration))
            stop.set()
            for t in threads:
                t.join(timeout=10)
            time.sleep(2)
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    print(
        f"\n## 2. GET /forecast/{{entity}}, wrk -t2 -c8 -d{duration}s, "
        f"tsops serve (one worker), {rounds} rounds"
    )
    print(f"{'':<44}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    names = {"alone": "nobody watching", "watched": "2 dashboards open, sink +500 records/s"}
    for key, runs in results.items():
        for r in runs:
            print(f"{names[key]:<44}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p90']:>9.2f}{r['p99']:>9.2f}")
    med = {
        k: {m: float(np.median([r[m] for r in v])) for m in ("rps", "p50", "p99")} for k, v in results.items()
    }
    a, w = med["alone"], med["watched"]
    print(
        f"watched / alone (medians): req/s {w['rps'] / a['rps']:.2f}, p50 {w['p50'] / a['p50']:.2f}, "
        f"p99 {w['p99'] / a['p99']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian package wrk; make setup installs it)")
    with tempfile.TemporaryDirectory(prefix="tsops-bench-") as tmp:
        folder = Path(tmp)
        refresh_cost(folder, args.records)
        if args.project is not None:
            src = Project.load(args.project)
            shutil.copytree(src.root, folder / "proj", ignore=shutil.ignore_patterns("predictions.jsonl"))
            project = Project.load(folder / "proj")
        else:
            project = prepare_project(folder)
        os.environ.pop("TSOPS_PROJECT_DIR", None)
        watched_serving(project, args.duration, args.rounds)


if __name__ == "__main__":
    main()
