"""A micro-batching queue: items submitted by concurrent requests within a few milliseconds share one call.

    batcher = MicroBatcher(embedder.encode, max_batch=32, max_wait_ms=5, executor=model_thread)
    vectors = await batcher.submit_many(notes)      # inside a request handler

One asyncio task collects items: it waits for the first, then keeps collecting until `max_batch` items or
`max_wait_ms` have passed, and runs `fn(items)` once in `executor` (a single-thread executor serialises the
model: it is the lock around it). `fn` returns one result per item, in order. An exception in `fn` fails
every request of that batch with it. Why: a forward pass (or a flat index scan, which is memory-bound) costs
almost the same for 1 item as for 16, so under load batching multiplies throughput.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any, Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    def __init__(self, fn: Callable[[list[Item]], Sequence[Result]], max_batch: int = 32,
                 max_wait_ms: float = 5.0, executor: Executor | None = None, name: str = "batch"):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000.0
        self.executor, self.name = executor, name
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._more: asyncio.Event | None = None
        self.batches = 0          # counters for /health and tests
        self.items = 0
        self.largest_batch = 0
        self.busy_seconds = 0.0   # wall time inside fn
        self.cpu_seconds = 0.0    # CPU time of the thread running fn (what the work costs, load aside)

    # ---- lifecycle (call from the event loop that serves requests) ----
    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._more = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"microbatch-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:  # fail whatever was still waiting instead of leaving it hanging
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_exception(RuntimeError("the server is shutting down"))
            self._queue = None

    # ---- submitting ----
    async def submit(self, item: Item) -> Result:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[Item]) -> list[Result]:
        if self._queue is None or self._more is None:
            raise RuntimeError(f"micro-batcher '{self.name}' is not started (start it in the app's lifespan)")
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            future = loop.create_future()
            self._queue.put_nowait((item, future))
            futures.append(future)
        self._more.set()
        return list(await asyncio.gather(*futures))

    # ---- the collecting task ----
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None and self._more is not None
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait
            while True:
                while len(batch) < self.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0:
                    break
                self._more.clear()  # waiting on an event, not on queue.get: a timeout can never lose an item
                try:
                    await asyncio.wait_for(self._more.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]  # clients that went away
            if batch:
                try:
                    await self._call(loop, batch)
                except asyncio.CancelledError:  # stopped mid-batch: answer its requests instead of hanging them
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(RuntimeError("the server is shutting down"))
                    raise

    def _timed(self, items: list[Item]) -> Sequence[Result]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.fn(items)
        finally:
            self.busy_seconds += time.perf_counter() - wall
            self.cpu_seconds += time.thread_time() - cpu

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Any, asyncio.Future]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await loop.run_in_executor(self.executor, self._timed, items)
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: {len(items)} items gave {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.items += len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
