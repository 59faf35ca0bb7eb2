"""Reading, scoring and writing overlap: the source is read one thread ahead, the target
written one thread behind, each through a queue of a few chunks (so memory stays bounded).
pyarrow decodes and encodes without the GIL, numpy models compute without it, so on two
cores the three stages run side by side."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
POLL_S = 0.2  # how often a blocked stage looks at the stop flags

_END = object()


class Prefetch(Generic[T]):
    """Iterates `items` in a background thread, at most `depth` items ahead. An exception in
    the thread is raised by the consumer at the point it would have occurred."""

    def __init__(self, items: Iterator[T], depth: int = 2, stop: threading.Event | None = None):
        self._queue: queue.Queue[tuple[Any, Any]] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(target=self._run, args=(items,), name="tsops-batch-read", daemon=True)
        self._thread.start()

    def _put(self, entry: tuple[Any, Any]) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(entry, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as e:  # handed to the consumer
            self._put((None, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's `finally` (e.g. closing a database cursor) runs here

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item, error = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop is not None and self._stop.is_set():
                    return  # the consumer notices the stop flag and ends the run
                continue
            if error is not None:
                raise error
            if item is _END:
                return
            yield item

    def close(self) -> None:
        self._closed.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)


class BackgroundWriter:
    """`write` hands a batch to a thread that writes it to `target`; `finish` waits until
    everything is written (and raises the thread's error, if any)."""

    def __init__(self, target: Any, depth: int = 2):
        self.target = target
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tsops-batch-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _END:
                return
            if self._error is None:
                try:
                    self.target.write(batch)
                except BaseException as e:
                    self._error = e

    def write(self, batch: Any) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(batch, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Discard what is queued and wait for the thread (before aborting the target)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._error = self._error or RuntimeError("stopped")
        self._queue.put(_END)
        self._thread.join(timeout=60)
