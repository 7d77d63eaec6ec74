"""Dynamic batching: images from concurrent requests share one backbone forward pass.

The first image to arrive opens a batch; the batch runs when it holds `max_batch` images or
`max_wait_s` after it opened, whichever comes first. The backbone runs in one dedicated thread
(`executor`), so the event loop keeps accepting requests while a batch computes, and the queue
is bounded: past `max_queue` waiting images `submit` refuses at once (the app answers 503).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import torch

log = logging.getLogger("geoalign.serve.batching")


class QueueFull(Exception):
    """More images are waiting than the queue holds."""


class Batcher:
    """Coalesces `submit(pixels)` calls into calls of `fn(stacked) -> rows`."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        executor: Executor,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[tuple[torch.Tensor, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Images waiting for the backbone (not counting the batch now computing)."""
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))

    def capacity(self) -> int:
        return self.max_queue - len(self._pending)

    async def submit_many(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """One output row per image, in order; QueueFull when they do not all fit."""
        if self._task is None:
            self.start()
        if len(images) > self.capacity():
            raise QueueFull
        loop = asyncio.get_running_loop()
        futures = []
        for pixels in images:
            future = loop.create_future()
            self._pending.append((pixels, future))
            futures.append(future)
        assert self._wake is not None
        self._wake.set()
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # a cancelled request's images leave the queue
                future.cancel()
            raise

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < self.max_batch and self.max_wait_s > 0:
                deadline = loop.time() + self.max_wait_s
                while len(self._pending) < self.max_batch:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except TimeoutError:
                        break
            batch = []
            while self._pending and len(batch) < self.max_batch:
                pixels, future = self._pending.popleft()
                if not future.cancelled():
                    batch.append((pixels, future))
            if not batch:
                continue
            try:
                stacked = torch.stack([pixels for pixels, _ in batch])
                rows = await loop.run_in_executor(self.executor, self.fn, stacked)
            except Exception as err:  # the model failed: every waiting request hears why
                log.exception("backbone batch of %d failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for i, (_, future) in enumerate(batch):
                if not future.done():
                    future.set_result(rows[i])
