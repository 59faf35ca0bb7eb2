"""Stopping on SIGTERM and SIGINT: one way for every long-running command.

A signal sets an event that the work checks at its own boundaries (a micro-batch, a chunk, an
epoch), so it finishes the unit in hand, commits and exits 0; a signal never lands in the middle
of a library call. Handlers can only be installed from the main thread; elsewhere (a stream run
inside a test or the demo) the caller's event is used as it is.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stop_on_signals(
    stop: threading.Event | None = None, *, second_interrupts: bool = False
) -> Iterator[threading.Event]:
    """Within the block, SIGTERM and SIGINT set the returned event (`stop`, or a new one);
    with `second_interrupts`, a second signal raises KeyboardInterrupt (do not wait for the unit
    in hand). The previous handlers are back after the block."""
    event = stop if stop is not None else threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handle(*_: Any) -> None:
        if second_interrupts and event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
