"""Request scheduling between a transport (REST, gRPC) and the engine.

The engine is not thread-safe, so it runs on ONE worker thread; torch releases the GIL during
the forward pass, so the event loop stays responsive while the model works. Two modes:

- `sequential`: one request at a time, first come first served. The unoptimized baseline: every
  decode step reads all the weights for a single row.
- `dynamic`: requests wait in a queue until `max_batch_size` have arrived or the oldest has waited
  `max_wait_ms`; the batch then runs as one left-padded batch (`Engine.steps`), one forward pass
  per decode step for all rows. A row is answered as soon as its own sequence ends (its token
  limit or its end-of-sequence token), and the batch stops once every row is done. Larger batches
  raise tokens/s, since the weights are read once per step for all rows, at the price of queueing
  delay and of prefill, which batches poorly on a CPU.

Requests that mask end-of-sequence (fixed output length) and those that stop at it change the
model's choice of token, so they never share a batch: each answer is the one the prompt gets alone.
Tokens reach the caller as they are produced (`submit` returns an async iterator), which is what
lets a client measure time to first token on a batched server.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from perfkit.config import ServingConfig
from perfkit.engine import Engine
from perfkit.hardware import now
from perfkit.serving.admission import check_queue
from perfkit.serving.metrics import ServingMetrics

Mode = Literal["sequential", "dynamic"]
T = TypeVar("T")
EWMA_WEIGHT = 0.3  # weight of the newest batch in the service-time estimate the queue bound uses


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_at_eos: bool = True
    client_key: str = ""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its position, id, text delta, and on the last one the finish reason."""

    index: int
    token_id: int
    text: str
    finish_reason: str | None  # "stop" (end of sequence) | "length" (max_new_tokens) on the last event
    time_s: float  # seconds since `submit` was called


@dataclass(eq=False)
class _Entry:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    submitted: float
    events: asyncio.Queue[tuple[int, str | None, float] | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def emit(self, item: tuple[int, str | None, float] | BaseException) -> None:
        """Called from the worker thread: hand an event to the request's own event loop."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Scheduler:
    """Queues generation requests and runs them on the engine, sequentially or in dynamic batches."""

    def __init__(
        self,
        engine: Engine,
        mode: Mode = "sequential",
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        max_queue_wait_s: float = 30.0,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.mode = mode
        self.capacity = max_batch_size if mode == "dynamic" else 1
        self.max_wait_s = max_wait_ms / 1000.0 if mode == "dynamic" else 0.0
        self.max_queue_wait_s = max_queue_wait_s
        self.metrics = metrics
        self.batch_s = 0.0  # moving estimate of one batch's service time
        self.batches_run = 0  # batches started
        self._pending: collections.deque[_Entry] = collections.deque()
        self._running = False
        self._closing = False
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perfkit-engine")
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, engine: Engine, serving: ServingConfig, metrics: ServingMetrics | None = None) -> Scheduler:
        return cls(engine, serving.scheduler, serving.max_batch_size, serving.max_wait_ms, serving.max_queue_wait_s, metrics)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="perfkit-scheduler")

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the engine's worker thread, between batches (e.g. embeddings, which share the cores)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Admit and queue a request, or raise QueueFull before queueing; then stream its tokens."""
        if request.max_new_tokens < 1 or not request.prompt_ids:
            raise ValueError("a request needs at least one prompt token and max_new_tokens >= 1")
        check_queue(len(self._pending), self._running, self.capacity, self.batch_s, self.max_queue_wait_s)
        entry = _Entry(request, asyncio.get_running_loop(), now())
        self._pending.append(entry)
        self._gauge()
        self._wakeup.set()
        return self._events(entry)

    async def _events(self, entry: _Entry) -> AsyncIterator[TokenEvent]:
        ids: list[int] = []
        sent = ""
        finished = False
        try:
            while not finished:
                item = await entry.events.get()
                if isinstance(item, BaseException):
                    raise item
                token, finish, t = item
                ids.append(token)
                finished = finish is not None
                text = self.engine.decode(ids)
                # A multi-byte character split across tokens decodes to U+FFFD until its last piece arrives.
                if text.endswith("\ufffd") and not finished:
                    delta = ""
                else:
                    delta, sent = text[len(sent) :], text
                yield TokenEvent(len(ids) - 1, token, delta, finish, t)
        finally:
            if not finished:  # the client went away: drop the request, or its row in the running batch
                entry.cancelled = True
                if entry in self._pending:
                    self._pending.remove(entry)
                    self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))

    def _take_batch(self) -> list[_Entry]:
        """The oldest request and up to capacity-1 more that agree with it on stopping at end-of-sequence."""
        head = self._pending[0]
        batch = [e for e in self._pending if e.request.stop_at_eos == head.request.stop_at_eos][: self.capacity]
        for e in batch:
            self._pending.remove(e)
        self._gauge()
        return batch

    def _compatible(self) -> int:
        head = self._pending[0]
        return sum(e.request.stop_at_eos == head.request.stop_at_eos for e in self._pending)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            deadline = self._pending[0].submitted + self.max_wait_s
            while self._pending and self._compatible() < self.capacity and (left := deadline - now()) > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
                self._wakeup.clear()
            if not self._pending:
                continue
            batch = self._take_batch()
            self.batches_run += 1
            self._running = True
            started = now()
            try:
                await loop.run_in_executor(self._executor, self._run_batch, batch, started)
            finally:
                self._running = False
            took = now() - started
            self.batch_s = took if self.batch_s == 0.0 else (1 - EWMA_WEIGHT) * self.batch_s + EWMA_WEIGHT * took
            if self._pending:
                self._wakeup.set()

    def _run_batch(self, batch: list[_Entry], started: float) -> None:
        """Worker thread: run one batch, handing each row its tokens as they come."""
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            for e in batch:
                self.metrics.queue_wait.observe(started - e.submitted)
        requests = [e.request for e in batch]
        limits = [r.max_new_tokens for r in requests]
        stop_at_eos = requests[0].stop_at_eos
        produced = [0] * len(batch)
        done = [e.cancelled for e in batch]
        steps = self.engine.steps([r.prompt_ids for r in requests], max(limits), stop_at_eos)
        try:
            for step in steps:
                t = now()
                for row, token in enumerate(step.tokens):
                    if token is None or done[row]:
                        continue
                    produced[row] += 1
                    finish = None
                    if stop_at_eos and token in self.engine.eos_ids:
                        finish = "stop"
                    elif produced[row] == limits[row]:
                        finish = "length"
                    batch[row].emit((token, finish, t - batch[row].submitted))
                    done[row] = finish is not None
                    if self.metrics is not None:
                        self.metrics.tokens.inc()
                done = [d or e.cancelled for d, e in zip(done, batch)]
                if all(done) or self._closing:
                    break
        except Exception as exc:  # an engine failure ends every unfinished row with the error, not a hang
            for row, e in enumerate(batch):
                if not done[row]:
                    e.emit(exc)
        finally:
            steps.close()
