"""Adaptive batching: concurrent requests for one model are merged into one model call.

Requests queue their rows; the batcher takes the first, then keeps taking what is queued
until the batch holds `max_batch_size` rows or `max_wait_s` has passed. A lone request is
not held back: when nothing else arrived by the time the event loop came round once, the
batch is cut at once, so sequential clients pay no wait, and it runs on the event loop
itself (a thread hop would only add latency). Otherwise the model runs in its own thread
while new requests queue and form the next batch. Each request gets exactly its rows of
the answer back on its future.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_STOP = object()


class AdaptiveBatcher:
    """Queue row blocks, run `predict` on merged batches, split the answers back."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        name: str = "model",
    ):
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"predict-{name}")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """The model's answer for `rows`, computed alone or together with other requests."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rows, future))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop (requests already queued still get answers)."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_STOP)
            if self._task is None:
                self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            batch, stop = await self._collect()
            if batch:
                await self._answer(loop, batch)
        self._executor.shutdown(wait=False)

    async def _collect(self) -> tuple[list[tuple[np.ndarray, asyncio.Future[np.ndarray]]], bool]:
        first = await self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        size = len(first[0])  # type: ignore[index]
        deadline = time.monotonic() + self.max_wait_s
        await asyncio.sleep(0)  # let handlers that are ready right now enqueue their rows
        while size < self.max_batch_size:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            elif len(batch) == 1 or time.monotonic() >= deadline:
                break  # a lone request is not held back; a busy one waits at most max_wait
            else:
                try:
                    item = await asyncio.wait_for(self._queue.get(), deadline - time.monotonic())
                except TimeoutError:
                    break
            if item is _STOP:
                self._queue.put_nowait(_STOP)  # handled after this batch is answered
                break
            batch.append(item)
            size += len(item[0])  # type: ignore[index]
        return batch, False  # type: ignore[return-value]

    async def _answer(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]],
    ) -> None:
        blocks = [rows for rows, _ in batch]
        merged = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        if self._on_batch is not None:
            self._on_batch(len(merged))
        try:
            if len(batch) == 1 and self._queue.empty():
                # nobody is waiting: a thread hop would only add latency (~0.2 ms)
                result = self._predict(merged)
            else:  # others queue and are parsed while the model runs
                result = await loop.run_in_executor(self._executor, self._predict, merged)
        except Exception as e:  # the model failed for the whole batch: every caller hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for rows, future in batch:
            if not future.done():  # the caller may have gone away
                future.set_result(result[start : start + len(rows)])
            start += len(rows)
