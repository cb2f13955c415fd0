"""Dynamic batching: images from many requests are combined into one forward pass.

A batch closes when it holds `max_batch` images or when its oldest image has waited `max_wait`
seconds, whichever comes first. The model runs in one worker thread, so the event loop keeps
accepting, decoding and answering while a batch computes. The queue is bounded: a request whose
images do not all fit is refused whole (the server answers 503), never half-queued.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor


class QueueFull(Exception):
    """The queue has no room for a request's images."""


class ShuttingDown(Exception):
    """The server is draining and takes no new work."""


@dataclass
class Job:
    """One image waiting for the model; its future receives (features, probabilities) rows."""

    tensor: Tensor
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


RunBatch = Callable[[Tensor], tuple[Tensor, "Tensor | None"]]
Observer = Callable[[int, float], None]


class DynamicBatcher:
    """Collects jobs into batches and runs `run_batch` on them in a dedicated thread."""

    def __init__(self, run_batch: RunBatch, max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch: Observer | None = None) -> None:
        self.run_batch, self.max_batch, self.max_wait_s, self.max_queue = run_batch, max_batch, max_wait_s, max_queue
        self.on_batch = on_batch
        self._pending: collections.deque[Job] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="effnet-model")
        self.running = 0  # images in the batch now computing

    @property
    def depth(self) -> int:
        """Images waiting (not yet in a running batch)."""
        return len(self._pending)

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def submit(self, tensors: list[Tensor]) -> list[asyncio.Future]:
        """Queue one request's images together; raises QueueFull or ShuttingDown without queueing any."""
        if self._closing or self._wakeup is None:
            raise ShuttingDown()
        if len(self._pending) + len(tensors) > self.max_queue:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        jobs = [Job(t, loop.create_future()) for t in tensors]
        self._pending.extend(jobs)
        self._wakeup.set()
        return [j.future for j in jobs]

    async def stop(self) -> None:
        """Take no new work, finish every queued image, then stop the worker thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def _take(self) -> list[Job]:
        """Up to max_batch queued jobs whose requests still wait for them (timed-out ones are dropped)."""
        batch: list[Job] = []
        while self._pending and len(batch) < self.max_batch:
            job = self._pending.popleft()
            if not job.future.done():
                batch.append(job)
        return batch

    def _live(self) -> int:
        return sum(not j.future.done() for j in self._pending)

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # wait from the oldest image's arrival, so images that queued during the last batch go at once
            deadline = self._pending[0].enqueued + self.max_wait_s
            while not self._closing and self._live() < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[Job]) -> None:
        self.running = len(batch)
        start = time.perf_counter()
        try:
            feats, probs = await loop.run_in_executor(self._executor, self.run_batch,
                                                      torch.stack([j.tensor for j in batch]))
        except Exception as e:  # the batch's own requests get the error; the server keeps serving
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        finally:
            self.running = 0
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - start)
        for i, job in enumerate(batch):
            if not job.future.done():  # its request may have timed out meanwhile
                job.future.set_result((feats[i], probs[i] if probs is not None else None))


def answer(futures: list[asyncio.Future], timeout_s: float) -> Any:
    """Await a request's images (as `asyncio.gather`), cancelling those left when it times out."""
    async def wait() -> list[Any]:
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        except BaseException:
            for f in futures:
                f.cancel()  # the batcher skips cancelled jobs still queued
            raise
    return wait()
