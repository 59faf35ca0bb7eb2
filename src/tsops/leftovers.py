"""What a process killed without a chance to clean up (SIGKILL, the OOM killer, a power cut)
leaves behind, cleared at the next start: temporary files under `.tsops/` and MLflow runs left
`RUNNING`. Nothing a live process still uses is touched: a file whose name carries the pid of
a running process is kept, one without a pid only once it is old, a run only when its process
(same host, pid in its tags) is gone."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tsops.leftovers")

HOST_TAG, PID_TAG = "tsops.host", "tsops.pid"
FAILED_TAG = "tsops.failed"
STALE_S = 600.0  # a temporary file without a pid: written and renamed within a second when alive


def owner_tags() -> dict[str, str]:
    """Tags that let a later start tell whether the process of a RUNNING run is still there."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _pid_in(name: str) -> int | None:
    """`features.parquet.<pid>.<ns>.tmp` → pid (the offline store's and Feast repo's writes)."""
    parts = name.split(".")
    if len(parts) >= 4 and parts[-3].isdigit() and parts[-2].isdigit():
        return int(parts[-3])
    return None


def _candidates(state_dir: Path) -> list[Path]:
    """`*.tmp` up to three levels under `state_dir` (the offline store, its stream parts, sinks,
    checkpoints), not inside MLflow's artefact tree, which can be large and holds none."""
    found = list(state_dir.glob("*.tmp"))
    try:
        folders = [d for d in state_dir.iterdir() if d.is_dir() and d.name != "mlartifacts"]
    except OSError:
        return found
    for folder in folders:
        found += [*folder.glob("*.tmp"), *folder.glob("*/*.tmp")]
    return found


def remove_stale_tmp_files(state_dir: Path, now: float | None = None) -> list[Path]:
    """Delete the temporary files of dead writers under `state_dir`; the ones removed."""
    if not state_dir.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for path in _candidates(state_dir):
        try:
            pid = _pid_in(path.name)
            stale = not _alive(pid) if pid is not None else now - path.stat().st_mtime > STALE_S
            if stale and path.is_file():
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # renamed or removed meanwhile: not a leftover
    if removed:
        log.warning("removed %d temporary file(s) a killed process left in %s", len(removed), state_dir)
    return removed


def fail_abandoned_runs(client: Any, experiment_name: str) -> list[str]:
    """Mark FAILED the experiment's RUNNING runs whose process (this host, pid tag) is gone."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=200)
    failed = []
    for run in runs:
        host, pid = run.data.tags.get(HOST_TAG), run.data.tags.get(PID_TAG)
        if host != socket.gethostname() or not (pid or "").isdigit() or _alive(int(pid)):
            continue
        client.set_tag(run.info.run_id, FAILED_TAG, "its process ended without finishing (killed)")
        client.set_terminated(run.info.run_id, "FAILED")
        failed.append(run.info.run_id)
    if failed:
        log.warning("marked %d run(s) of killed processes FAILED: %s", len(failed), ", ".join(failed))
    return failed
