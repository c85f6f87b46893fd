"""Scheduler invariants: every request answered exactly once, each answer the one the prompt gets alone."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from perfkit.serving.admission import QueueFull
from perfkit.serving.metrics import ServingMetrics
from perfkit.serving.scheduler import Scheduler
from perfkit.serving.work import GenerationRequest, TokenEvent


def _requests(engine, n: int, seed: int) -> list[GenerationRequest]:
    rng = random.Random(seed)
    vocab = int(engine.model.config.vocab_size)
    return [
        GenerationRequest(
            prompt_ids=tuple(rng.randrange(vocab) for _ in range(rng.randint(3, 20))),
            max_new_tokens=rng.randint(1, 6),
            stop_at_eos=rng.random() < 0.5,
            client_key=f"client-{i}",
        )
        for i in range(n)
    ]


async def _collect(scheduler: Scheduler, request: GenerationRequest, delay_s: float) -> list[TokenEvent]:
    await asyncio.sleep(delay_s)
    return [ev async for ev in await scheduler.submit(request)]


async def _serve_all(engine, requests, mode, delays, metrics=None) -> tuple[list[list[TokenEvent]], int]:
    scheduler = Scheduler(engine, mode, max_batch_size=4, max_wait_ms=30, metrics=metrics)
    await scheduler.start()
    try:
        answers = await asyncio.gather(*(_collect(scheduler, r, d) for r, d in zip(requests, delays)))
    finally:
        await scheduler.stop()
    return answers, scheduler.prefills


def _check_answers(engine, requests, answers) -> None:
    for request, events in zip(requests, answers):
        alone = engine.generate(request.prompt_ids, request.max_new_tokens, request.stop_at_eos)
        assert [ev.index for ev in events] == list(range(len(events)))
        assert [ev.finish_reason is not None for ev in events] == [False] * (len(events) - 1) + [True]
        assert [ev.token_id for ev in events] == alone.token_ids
        assert events[-1].finish_reason == alone.finish_reason


@pytest.mark.parametrize("kv_cache", ["dynamic", "slots"])
@pytest.mark.parametrize("mode", ["dynamic", "continuous"])
@pytest.mark.parametrize("seed", [0, 1])
def test_batcher_answers_each_request_once_as_if_alone(tiny, seed, mode, kv_cache):
    from perfkit.engine import Engine

    model, tokenizer, engine = tiny
    serving = engine if kv_cache == "dynamic" else Engine(model, tokenizer, "cpu", kv_cache="slots")
    requests = _requests(engine, 10, seed)
    delays = [random.Random(seed + 100).choice([0.0, 0.0, 0.005, 0.02, 0.05]) for _ in requests]
    metrics = ServingMetrics()
    answers, prefills = asyncio.run(_serve_all(serving, requests, mode, delays, metrics))
    _check_answers(engine, requests, answers)  # as the dynamic-cache engine answers each alone
    assert prefills < len(requests)  # some requests were prefilled together
    sample = metrics.registry.get_sample_value
    assert sample("perfkit_batch_size_sum") == len(requests)  # each request was prefilled exactly once
    tokens = sum(len(a) for a in answers)
    assert sample("perfkit_generated_tokens_total") == tokens
    # every token but each request's first (from its prefill) came from a decode step holding at most 4 rows
    assert sample("perfkit_decode_rows_sum") == tokens - len(requests)
    assert sample("perfkit_decode_rows_bucket", {"le": "4.0"}) == sample("perfkit_decode_rows_count")


def test_continuous_batching_refills_a_slot_while_the_batch_runs(tiny):
    """A short request arriving while a long one runs starts at once, and ends first, instead of waiting for the batch."""
    _, _, engine = tiny
    long = GenerationRequest((1, 2, 3), max_new_tokens=60, stop_at_eos=False)
    short = GenerationRequest((4, 5, 6, 7), max_new_tokens=3, stop_at_eos=False)

    async def scenario(mode: str) -> tuple[float, float, float]:
        """Clock times (not durations: each event's time_s counts from its own submit) of the short request's
        first and last token and of the long request's last token."""
        scheduler = Scheduler(engine, mode, max_batch_size=2, max_wait_ms=0)
        await scheduler.start()
        try:
            long_sent = time.perf_counter()
            stream = await scheduler.submit(long)
            await anext(stream)  # the long request is running
            short_sent = time.perf_counter()
            short_events = [ev async for ev in await scheduler.submit(short)]
            long_events = [ev async for ev in stream]
            assert [ev.token_id for ev in short_events] == engine.generate(short.prompt_ids, 3, False).token_ids
            return short_sent + short_events[0].time_s, short_sent + short_events[-1].time_s, long_sent + long_events[-1].time_s
        finally:
            await scheduler.stop()

    _, short_done, long_done = asyncio.run(scenario("continuous"))
    assert short_done < long_done
    short_first, _, long_done = asyncio.run(scenario("dynamic"))
    assert short_first >= long_done  # without refill it waited for the whole long batch


def test_answers_do_not_depend_on_arrival_order(tiny):
    _, _, engine = tiny
    requests = _requests(engine, 8, seed=3)
    forward, _ = asyncio.run(_serve_all(engine, requests, "dynamic", [0.0] * 8))
    backward, _ = asyncio.run(_serve_all(engine, requests[::-1], "dynamic", [0.0] * 8))
    assert [[e.token_id for e in a] for a in forward] == [[e.token_id for e in a] for a in backward[::-1]]


def test_sequential_runs_one_request_per_batch(tiny):
    _, _, engine = tiny
    requests = _requests(engine, 5, seed=4)
    answers, batches = asyncio.run(_serve_all(engine, requests, "sequential", [0.0] * 5))
    _check_answers(engine, requests, answers)
    assert batches == len(requests)


def test_a_cancelled_request_does_not_stall_the_others(tiny):
    _, _, engine = tiny
    long = GenerationRequest((1, 2, 3), max_new_tokens=40, stop_at_eos=False)
    short = GenerationRequest((4, 5, 6), max_new_tokens=3, stop_at_eos=False)

    async def scenario() -> tuple[int, list[TokenEvent], int]:
        scheduler = Scheduler(engine, "sequential")
        await scheduler.start()
        try:
            events = await scheduler.submit(long)
            first = await anext(events)
            await events.aclose()  # the client goes away after one token
            rest = [ev async for ev in await scheduler.submit(short)]
            return first.index, rest, scheduler.queue_depth
        finally:
            await scheduler.stop()

    first, rest, depth = asyncio.run(scenario())
    assert first == 0
    assert [ev.token_id for ev in rest] == engine.generate(short.prompt_ids, 3, False).token_ids
    assert depth == 0


def test_queue_bound_refuses_before_queueing(tiny):
    _, _, engine = tiny
    warm = GenerationRequest((1, 2, 3), max_new_tokens=2, stop_at_eos=False)
    long = GenerationRequest((1, 2, 3), max_new_tokens=200, stop_at_eos=False)

    async def scenario() -> int:
        scheduler = Scheduler(engine, "sequential", max_queue_wait_s=1e-6)
        await scheduler.start()
        try:
            await scheduler.warm_up((1, 2, 3))  # prices a prefill and a decode step
            running = await scheduler.submit(long)
            await anext(running)
            with pytest.raises(QueueFull) as full:
                await scheduler.submit(warm)
            assert full.value.retry_after_s > 0
            await running.aclose()
            return scheduler.queue_depth
        finally:
            await scheduler.stop()

    assert asyncio.run(scenario()) == 0


def test_queue_bound_counts_a_request_during_its_prefill(tiny):
    """Taken from the queue but not yet decoding, a request is still ahead of the next one."""
    import threading

    _, _, engine = tiny
    long = GenerationRequest((1, 2, 3), max_new_tokens=50, stop_at_eos=False)
    prefilling, release = threading.Event(), threading.Event()

    async def scenario() -> tuple[float, float]:
        scheduler = Scheduler(engine, "sequential")
        join = scheduler._batch.join

        def held_join(rows, *rest):
            prefilling.set()
            release.wait(10)
            return join(rows, *rest)

        scheduler._batch.join = held_join  # type: ignore[method-assign]
        await scheduler.start()
        try:
            await scheduler.warm_up((1, 2, 3))
            running = await scheduler.submit(long)
            await asyncio.to_thread(prefilling.wait, 10)
            during, step_s = scheduler.expected_wait_s(), scheduler.prices.step_s  # the price the estimate used
            release.set()
            async for _ in running:
                pass
            return during, step_s
        finally:
            release.set()
            await scheduler.stop()

    during, step_s = asyncio.run(scenario())
    assert during >= 50 * step_s > 0


def test_a_request_that_does_not_stream_is_handed_over_once_with_each_token_timed(tiny, monkeypatch):
    from perfkit.serving.work import BatchEntry

    _, _, engine = tiny
    requests = [GenerationRequest((1, 2, 3), max_new_tokens=6, stop_at_eos=False, stream=s) for s in (False, True)]
    handovers: list[int] = []
    emit = BatchEntry.emit

    def counted(entry, item):
        if entry.request in requests:  # not a hand-over of another test's scheduler still winding down
            handovers.append(len(item))
        emit(entry, item)

    monkeypatch.setattr(BatchEntry, "emit", counted)

    async def scenario() -> list[list[TokenEvent]]:
        scheduler = Scheduler(engine, "sequential")
        await scheduler.start()
        try:
            return [[ev async for ev in await scheduler.submit(r)] for r in requests]
        finally:
            await scheduler.stop()

    held, streamed = asyncio.run(scenario())
    assert handovers == [6] + [1] * 6  # the held answer at once, the streamed one token by token
    assert [ev.token_id for ev in held] == [ev.token_id for ev in streamed]
    times = [ev.time_s for ev in held]
    assert times == sorted(times) and times[0] < times[-1]  # each token keeps the time it was produced
