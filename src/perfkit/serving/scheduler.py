"""Request scheduling between a transport (REST, gRPC) and the engine.

The engine is not thread-safe, so it runs on ONE worker thread; torch releases the GIL during
the forward pass, so the event loop stays responsive while the model works. Three modes, all
over one batch from `Engine.new_batch` (rows share a KV cache, dynamic or in slots; a row is answered as soon as
its own sequence ends, and leaves the batch):

- `sequential`: one request at a time, first come first served. The unoptimized baseline: every
  decode step reads all the weights for a single row.
- `dynamic`: requests wait in a queue until `max_batch_size` have arrived or the engine has idled
  `max_wait_ms` waiting for them; the batch is prefilled together and decoded until its last row ends, one forward
  pass per step for all rows. Newcomers wait for the whole batch, however few rows are left.
- `continuous` (iteration-level batching, as vLLM and TGI do it): between two decode steps,
  waiting requests are prefilled and join the running batch as far as it has room
  (`max_batch_size`), so a finished row's slot is refilled at the next step instead of idling
  until the batch drains. The price: each join stalls the running rows for one prefill.

Larger batches raise tokens/s, since the weights are read once per step for all rows, at the
price of queueing delay and of prefill, which batches poorly on a CPU. Rows that stop at
end-of-sequence and rows with a fixed output length share batches: the end-of-sequence token is
masked per row. Tokens reach the caller as they are produced (`submit` returns an async
iterator), which is what lets a client measure time to first token on a batched server.
The waiting line is first come first served, or fair across client keys (`fair_queueing`:
`perfkit.serving.queueing`), so that one client's burst does not take every batch slot.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from perfkit.engine import Engine
from perfkit.hardware import now
from perfkit.running import RowToken
from perfkit.service_sections import SchedulerMode, ServingConfig
from perfkit.serving.admission import ServicePrices, check_queue, expected_wait_s
from perfkit.serving.metrics import ServingMetrics
from perfkit.serving.queueing import FairQueueing, RequestQueue
from perfkit.serving.work import BatchEntry, GenerationRequest, SideJob, TokenEvent

T = TypeVar("T")


class Scheduler:
    """Queues generation requests and runs them on the engine: sequentially, in dynamic batches, or continuously."""

    def __init__(
        self,
        engine: Engine,
        mode: SchedulerMode = "sequential",
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        max_queue_wait_s: float = 30.0,
        metrics: ServingMetrics | None = None,
        executor: ThreadPoolExecutor | None = None,
        fair_queueing: FairQueueing = "off",
        fair_share_window_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.mode = mode
        self.capacity = 1 if mode == "sequential" else max_batch_size
        self.refill = mode == "continuous"
        self.max_wait_s = 0.0 if mode == "sequential" else max_wait_ms / 1000.0
        self.max_queue_wait_s = max_queue_wait_s
        self.metrics = metrics
        self.prices = ServicePrices()  # what a decode step and a prompt token cost: the queue bound's unit prices
        self.prefills = 0  # prefill passes run: a sequential request, a dynamic batch, or the newcomers of one step
        self._batch = engine.new_batch(self.capacity)  # touched by the worker thread only
        self._remaining: list[int] = []  # the running rows' remaining steps, published by the worker for admission
        self._joining: list[BatchEntry] = []  # taken from the queue, prefill not yet done: still ahead of a newcomer
        # FIFO, or fair across client keys (serving.fair_queueing): see perfkit.serving.queueing.
        self._pending: RequestQueue[BatchEntry] = RequestQueue(
            fair_queueing,
            key=lambda e: e.request.client_key,
            cost=lambda e: e.request.max_new_tokens,
            slots=self.capacity,
            share_window_s=fair_share_window_s,
        )
        self._side: collections.deque[SideJob] = collections.deque()  # run_side jobs, taken by the worker
        self._lock = threading.Lock()  # guards _pending: the event loop adds and cancels, the worker takes (refill)
        self._free_since = 0.0  # when the engine last finished a batch
        self._lap_start = 0.0  # worker: when the last priced pass (prefill or step) ended
        self._closing = False
        self._wakeup = asyncio.Event()
        # The one thread that runs torch (see state.prepare: it also loaded the model, so one OpenMP team serves all).
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="perfkit-engine")
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls, engine: Engine, serving: ServingConfig, metrics: ServingMetrics | None = None, executor: ThreadPoolExecutor | None = None
    ) -> Scheduler:
        s = serving
        return cls(
            engine,
            s.scheduler,
            s.max_batch_size,
            s.max_wait_ms,
            s.max_queue_wait_s,
            metrics,
            executor,
            s.fair_queueing,
            s.fair_share_window_s,
        )

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

    async def warm_up(self, prompt_ids: Sequence[int], new_tokens: int = 3) -> None:
        """Pay lazy initialisation, and price a prefill and a decode step at full width, before any client comes.

        Without the prices, the queue bound would admit a whole opening burst: it knows no service
        time until the first request has finished.
        """
        await self.run_exclusive(self._price, tuple(prompt_ids), new_tokens)

    def _price(self, prompt_ids: tuple[int, ...], new_tokens: int) -> None:
        self.engine.warm_compiled(prompt_ids)  # a compiled step's graph, before pricing
        batch = self.engine.new_batch(self.capacity, reuse_prefixes=False)  # priced whole, as a prompt seen first
        t0 = now(self.engine.device)
        batch.join([(row, prompt_ids, new_tokens, False) for row in range(self.capacity)])
        t1 = now(self.engine.device)
        self.prices.observe_prefill(t1 - t0, self.capacity * len(prompt_ids))
        while batch:
            batch.step()
            t0, t1 = t1, now(self.engine.device)
            self.prices.observe_step(t1 - t0)

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the engine's worker thread, between batches (e.g. embeddings, which share the cores)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run_side(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the engine's worker thread at the next gap: between two decode steps of a running
        batch, or at once when the engine is idle. `run_exclusive` would wait behind a whole batch."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._side.append(SideJob(fn, args, future))
        self._wakeup.set()
        return await future

    def _run_side(self) -> None:
        """Worker thread: run the side jobs waiting now; the pricing clock restarts after them."""
        ran = False
        while True:
            with self._lock:
                if not self._side:
                    break
                job = self._side.popleft()
            job.run()
            ran = True
        if ran:
            self._lap_start = now(self.engine.device)  # side jobs are not part of a step's price

    def expected_wait_s(self, client_key: str = "") -> float:
        """How long a request of `client_key` arriving now would wait for its prefill to start (the 503 bound's
        estimate); under fair queueing only the requests its key would be served after count."""

        def sizes(entries: Sequence[BatchEntry]) -> list[tuple[int, int]]:
            return [(len(e.request.prompt_ids), e.request.max_new_tokens) for e in entries]

        # Read the queue side first: the worker publishes `_remaining` before it clears `_joining`, so a
        # request between the two is counted twice at worst, never missed.
        with self._lock:
            queued, joining = sizes(self._pending.ahead_of(client_key)), sizes(self._joining)
        return expected_wait_s(self._remaining, queued, self.capacity, self.refill, self.prices, joining)

    async def submit(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Admit and queue a request, or raise QueueFull before queueing; then stream its tokens."""
        if request.max_new_tokens < 1 or not request.prompt_ids:
            raise ValueError("a request needs at least one prompt token and max_new_tokens >= 1")
        check_queue(self.expected_wait_s(request.client_key), self.max_queue_wait_s)
        entry = BatchEntry(request, asyncio.get_running_loop(), now())
        with self._lock:
            self._pending.append(entry)
        self._gauge()
        self._wakeup.set()
        return self._events(entry)

    async def _events(self, entry: BatchEntry) -> AsyncIterator[TokenEvent]:
        ids: list[int] = []
        sent = ""
        finished = False
        try:
            while not finished:
                item = await entry.events.get()
                if isinstance(item, BaseException):
                    raise item
                for token, finish, t in item:
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
                with self._lock:
                    self._pending.remove(entry)
                self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))

    def _take(self, room: int) -> list[BatchEntry]:
        """Up to `room` of the waiting requests in service order, out of the queue and into `_joining` until
        prefilled; under the fair slot share the running rows count against their keys' shares."""
        held = collections.Counter(e.request.client_key for e in self._rows()) if self._pending.shares_slots else None
        with self._lock:
            taken = self._pending.take(room, held)
            self._joining = taken
        if taken:
            self._gauge()
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._side:
                await loop.run_in_executor(self._executor, self._run_side)
            with self._lock:
                oldest = self._pending.oldest() if self._pending else None
            if oldest is None:
                continue
            # The fill window: the engine idles at most max_wait_ms for a batch to fill, counted from when it
            # became free. Counted from the oldest request's arrival instead, the window would have expired for
            # every request that queued behind a running batch, and a closed loop would alternate a full batch
            # with the few stragglers that missed it.
            deadline = max(oldest.submitted, self._free_since) + self.max_wait_s
            while 0 < len(self._pending) < self.capacity and (left := deadline - now()) > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
                self._wakeup.clear()
            first = self._take(self.capacity)
            if first and self.metrics is not None:
                # The wait batching adds: from when each request could have started (its arrival, or the engine
                # coming free) to the batch's start; the queue wait behind a running batch is not part of it.
                taken = now()
                for e in first:
                    self.metrics.fill_wait.observe(max(0.0, taken - max(e.submitted, self._free_since)))
            if first:
                await loop.run_in_executor(self._executor, self._drain, first)
                self._free_since = now()
            if self._pending:
                self._wakeup.set()

    def _drain(self, first: list[BatchEntry]) -> None:
        """Worker thread: run the batch until no row is left, refilling free slots between steps if continuous."""
        newcomers = first
        self._lap_start = now(self.engine.device)
        try:
            while newcomers or self._batch:
                if newcomers:
                    self._join(newcomers)
                if self._batch:
                    self._step()
                self._batch.drop({e for e in self._rows() if e.cancelled})
                self._run_side()
                if self._closing:
                    break
                newcomers = self._take(self.capacity - len(self._batch)) if self.refill else []
        except Exception as exc:  # an engine failure ends every unfinished row with the error, not a hang
            for e in {*self._rows(), *newcomers}:
                e.emit(exc)
            self._batch = self.engine.new_batch(self.capacity)
        finally:
            self._remaining = []
            with self._lock:
                self._joining = []

    def _rows(self) -> list[BatchEntry]:
        return [row.key for row in self._batch.rows]  # type: ignore[misc]

    def _join(self, entries: list[BatchEntry]) -> None:
        started = now(self.engine.device)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(entries))
            for e in entries:
                self.metrics.queue_wait.observe(started - e.submitted)
        live = [e for e in entries if not e.cancelled]
        self.prefills += 1
        produced = self._batch.join([(e, e.request.prompt_ids, e.request.max_new_tokens, e.request.stop_at_eos) for e in live])
        self._emit(produced)
        self.prices.observe_prefill(self._lap(), sum(len(e.request.prompt_ids) for e in live))

    def _step(self) -> None:
        if self.metrics is not None:
            self.metrics.decode_rows.observe(len(self._batch))
        self._emit(self._batch.step())
        self.prices.observe_step(self._lap())

    def _lap(self) -> float:
        """Seconds since the last prefill or step ended: the prices cover all of the worker's time, the
        hand-over of tokens and the bookkeeping between passes included, or the queue bound would promise
        less waiting than a request gets."""
        t = now(self.engine.device)
        seconds, self._lap_start = t - self._lap_start, t
        return seconds

    def _emit(self, produced: list[RowToken]) -> None:
        self._remaining = self._batch.remaining_tokens  # published before the tokens, so admission never lags them
        if self._joining:
            with self._lock:
                self._joining = []  # now among the running rows
        t = now()
        for token in produced:
            entry: BatchEntry = token.key  # type: ignore[assignment]
            entry.produce((token.token, token.finish, t - entry.submitted))
        if self.metrics is not None:
            self.metrics.tokens.inc(len(produced))
