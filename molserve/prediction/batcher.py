"""Dynamic batching: molecules from concurrent requests are grouped into model calls.

A call takes up to `max_batch` molecules, waits at most `max_wait_s` for more once the first
arrives, and prefers molecules of similar SMILES length to the oldest one (length bucketing
keeps padding small). The queue is bounded: past `max_queue` waiting molecules, submissions are
refused at once so the caller can answer 503 with Retry-After instead of queueing forever.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from molserve.processes import cancel_and_wait


class Overloaded(Exception):
    def __init__(self, waiting: int, limit: int, retry_after_s: float) -> None:
        super().__init__(f"{waiting} molecules waiting; the queue holds {limit}")
        self.retry_after_s = retry_after_s


@dataclass(order=True)
class _Item:
    enqueued: float
    smiles: str = field(compare=False)
    future: asyncio.Future = field(compare=False)
    tag: Any = field(default=None, compare=False)  # travels with the molecule (a request id)


class DynamicBatcher:
    def __init__(self, predict: Callable[[list[str]], Any], *, max_batch: int = 64,
                 max_wait_s: float = 0.005, max_queue: int = 2048, max_in_flight: int = 1,
                 with_tags: bool = False) -> None:
        # A plain function runs in a thread (model inference); a coroutine function (a remote
        # call) is awaited on the event loop.
        self.predict = predict
        self._is_async = inspect.iscoroutinefunction(predict)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        # With tags, `predict(smiles, tags)` also gets what each molecule's caller submitted it
        # with (the request ids of a batch that mixes requests).
        self.with_tags = with_tags
        # Calls running at once: 1 for a model on this machine; more for remote calls, so a
        # slow worker does not hold every other molecule back.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._calls: set[asyncio.Task] = set()
        self._pending: list[_Item] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.molecules = 0
        self.last_batch_seconds = 0.0

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for call in list(self._calls):
            call.cancel()
        await cancel_and_wait(self._task)
        self._task = None

    async def submit(self, smiles: list[str], tag: Any = None) -> list[Any]:
        if len(self._pending) + len(smiles) > self.max_queue:
            per_batch = max(self.last_batch_seconds, 0.05)
            raise Overloaded(len(self._pending), self.max_queue,
                             retry_after_s=per_batch * (len(self._pending) / self.max_batch + 1))
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(now, s, loop.create_future(), tag) for s in smiles]
        self._pending.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    def _take_batch(self) -> list[_Item]:
        if len(self._pending) <= self.max_batch:
            batch, self._pending = self._pending, []
            return batch
        oldest = self._pending[0]
        rest = sorted(self._pending[1:], key=lambda it: abs(len(it.smiles) - len(oldest.smiles)))
        batch = [oldest] + rest[: self.max_batch - 1]
        chosen = {id(it) for it in batch}
        self._pending = [it for it in self._pending if id(it) not in chosen]
        return batch

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._pending[0].enqueued + self.max_wait_s
            while len(self._pending) < self.max_batch and time.monotonic() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
            await self._slots.acquire()
            # Molecules whose callers gave up (their futures cancelled) are not sent.
            batch = [it for it in self._take_batch() if not it.future.done()]
            if not batch:
                self._slots.release()
                continue
            call = asyncio.create_task(self._run_batch(batch))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            smiles = [it.smiles for it in batch]
            if self._is_async:
                answers = await (self.predict(smiles, [it.tag for it in batch]) if self.with_tags
                                 else self.predict(smiles))
            else:
                answers = await asyncio.to_thread(self.predict, smiles)
        except Exception as error:  # the model failed: every caller in the batch learns why
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._slots.release()
        self.last_batch_seconds = time.perf_counter() - started
        self.batches += 1
        self.molecules += len(batch)
        for item, answer in zip(batch, answers, strict=True):
            if not item.future.done():
                item.future.set_result(answer)
