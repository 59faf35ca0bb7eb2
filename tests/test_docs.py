"""The shell blocks of README.md and docs/getting-started.md run as written and print what
they show.

A ```bash block is a list of commands: each must exit 0. A ```text block with `$ ` prompts
is a transcript: each command runs, and the lines shown after it must appear in its real
output, in order (numbers, run ids and absolute folders may differ; a `...` line stands for
lines left out). Each document runs top to bottom in one bash session in an empty folder
holding a copy of `examples/`, with small training settings so the whole test stays short.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Smaller, still deterministic training: the documents' transcripts were captured with the
# defaults, and only numbers differ.
QUICK = {
    "TSOPS_MODEL__QUICK_EPOCHS": "2",
    "TSOPS_MODEL__HIDDEN_SIZE": "16",
    "TSOPS_MODEL__INPUT_WINDOW": "24",
    "TSOPS_MODEL__BATCH_SIZE": "256",
}
# `make setup/test/demo` are this test's own entry points (it runs inside `make test`, in the
# environment `make setup` built, which `source .venv/bin/activate` would enter).
SKIPPED = ("make ", "source .venv/bin/activate")
DOCS = ["README.md", "docs/getting-started.md"]


@dataclass
class Step:
    command: str
    shown: list[str] | None  # the transcript's output lines; None: a bash block's command


def shell_steps(markdown: str) -> list[Step]:
    """The commands of a document's shell blocks, in order, with the output each shows."""
    steps: list[Step] = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", markdown, re.S | re.M):
        lines = body.splitlines()
        if lang in ("bash", "sh", "shell"):
            steps += [Step(line, None) for line in lines if line.strip() and not line.startswith("#")]
        elif lang in ("text", "console") and any(line.startswith("$ ") for line in lines):
            for line in lines:
                if line.startswith("$ "):
                    steps.append(Step(line[2:], []))
                elif steps and steps[-1].shown is not None:
                    steps[-1].shown.append(line)
    return [s for s in steps if not s.command.startswith(SKIPPED)]


def normalise(line: str) -> str:
    line = re.sub(r"\b[0-9a-f]{32}\b", "<id>", line)
    line = re.sub(r"(?:/[\w.\-]+)+/", "<dir>/", line)
    line = re.sub(r"\d+(?:\.\d+)?(?:e-?\d+)?", "<n>", line)
    line = re.sub(r"[━─┏┓┗┛┳┻╇┡┩┃│└┘┴]+", "|", line)
    return re.sub(r"\s+", " ", line).strip()


def run_steps(steps: list[Step], cwd: Path, timeout: float = 900) -> list[tuple[str, int]]:
    """Run the commands in one bash session (so `cd` and `echo $?` work as in a terminal);
    (output, exit code) per command, stdout and stderr interleaved."""
    script = ["exec 2>&1", "printf '::step\\n'"]
    for step in steps:
        script += [step.command, "__rc=$?", "printf '\\n::rc %s\\n::step\\n' $__rc", "(exit $__rc)"]
    env = {
        **os.environ,
        **QUICK,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "COLUMNS": "120",
    }
    env.pop("TSOPS_PROJECT_DIR", None)
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    results = []
    for chunk in done.stdout.split("::step\n")[1 : len(steps) + 1]:
        output, _, code = chunk.rpartition("\n::rc ")
        results.append((output, int(code.strip() or -1)))
    assert len(results) == len(steps), done.stdout[-3000:]
    return results


def missing_lines(shown: list[str], output: str) -> list[str]:
    """The shown lines not found, in order, in the real output (empty: it matches)."""
    actual = [normalise(line) for line in output.splitlines()]
    position, missing = 0, []
    for line in shown:
        wanted = normalise(line)
        if not wanted or wanted == "...":
            continue
        try:
            position = actual.index(wanted, position) + 1
        except ValueError:
            missing.append(line)
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_the_shell_blocks_of_the_docs_run_as_written(doc: str, tmp_path: Path) -> None:
    steps = shell_steps((ROOT / doc).read_text())
    assert len(steps) >= 5, f"{doc}: no shell blocks found"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    problems = []
    for step, (output, code) in zip(steps, run_steps(steps, tmp_path), strict=True):
        if "Traceback" in output:
            problems.append(f"$ {step.command}\n  printed a traceback:\n{output[-1500:]}")
        elif step.shown is None and code != 0:
            problems.append(f"$ {step.command}\n  exit code {code}:\n{output[-1500:]}")
        elif step.shown and (missing := missing_lines(step.shown, output)):
            problems.append(f"$ {step.command}\n  does not print {missing}; it printed:\n{output[-2500:]}")
    assert not problems, "\n\n".join(problems)


def test_a_transcript_line_that_the_command_does_not_print_is_reported() -> None:
    steps = shell_steps("```text\n$ echo hello 42\nhello 7\n$ echo x\nnot x\n```\n")
    assert [s.command for s in steps] == ["echo hello 42", "echo x"]
    assert missing_lines(steps[0].shown or [], "hello 42\n") == []
    assert missing_lines(steps[1].shown or [], "x\n") == ["not x"]
