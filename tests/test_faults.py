"""The standing fault suite (issue 19): each test injects one fault and asserts what a user can
rely on: nothing lost, one clear message naming the cause, the exit code. docs/reliability.md
lists every fault with its promise and the test that keeps it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import run_cli

# --- Batch ---------------------------------------------------------------------------------


def _batch_job(folder: Path, target_path: str) -> Path:
    """A job whose target is `target_path`; its model does not exist, so a run that got past
    the target check would fail loading it (the refusal must come first, before any work)."""
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(folder / "in.parquet", index=False)
    job = folder / "job.yaml"
    raw = {
        "model": {"uri": "models:/nothing@champion", "tracking_uri": f"sqlite:///{folder / 'no.db'}"},
        "data": {
            "source": {"type": "parquet", "params": {"path": "in.parquet"}},
            "target": {"type": "parquet", "params": {"path": target_path}},
        },
    }
    job.write_text(yaml.safe_dump(raw))
    return job


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_fifo() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (".", "is a folder that this target did not write"),
        ("data", "is a folder that this target did not write"),
        ("empty", "is a folder (empty) that this target did not write"),
        ("fifo", "is not a regular file (a device, pipe or socket)"),
        ("link.parquet", "is a symbolic link"),
    ],
)
def test_batch_refuses_a_target_it_would_destroy(tmp_path: Path, target: str, says: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.csv").write_text("precious\n")
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.parquet").symlink_to(tmp_path / "data" / "keep.csv")
    job = _batch_job(tmp_path, target)
    before = _tree(tmp_path)
    out = run_cli("batch", "--config", str(job), timeout=120)
    assert out.returncode == 2, out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr
    assert "data.target.params.path" in out.stderr
    assert _tree(tmp_path) == before  # nothing moved, replaced or removed


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder that cannot be written to: a read-only tmpfs as root (root ignores modes),
    else mode 555."""
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def test_batch_to_a_read_only_folder_exits_2_naming_it(tmp_path: Path) -> None:
    with read_only_folder(tmp_path / "ro") as ro:
        job = _batch_job(tmp_path, "ro/out.parquet")
        out = run_cli("batch", "--config", str(job), timeout=120)
    assert out.returncode == 2, out.stderr
    assert f"cannot write in {ro}" in out.stderr and "read-only" in out.stderr
    assert "Traceback" not in out.stderr
