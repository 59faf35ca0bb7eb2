"""What tsops prints besides its own results: progress bars, and third-party output it hides.

A user sees tsops' own lines and nothing else unless they ask (`tsops --verbose`, or
`TSOPS_VERBOSE=1`, which worker processes inherit). Progress goes to stderr, only on a
terminal, and disappears when done: piped output holds results, not spinner frames.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn

VERBOSE_ENV = "TSOPS_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def progress(*columns: str | ProgressColumn, show: bool = True) -> Progress:
    """A Rich progress display on stderr, shown only on a terminal, erased when done."""
    console = Console(stderr=True)
    return Progress(*columns, console=console, transient=True, disable=not (show and console.is_terminal))


@contextlib.contextmanager
def third_party_output() -> Iterator[None]:
    """Hide what a library prints to stdout/stderr (Feast's materialisation banner and bars,
    with raw colour codes when piped) unless verbose."""
    if verbose():
        yield
        return
    sink: Any = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
