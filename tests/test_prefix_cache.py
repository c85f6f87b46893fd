"""Prefix (KV) reuse: the same tokens with and without it, a store bounded in bytes, side jobs between steps."""

from __future__ import annotations

import asyncio

import torch
from test_serving_cache import cache_config, embedder, start  # noqa: F401 -- the module-scoped embedder

from perfkit.engine import Engine
from perfkit.prefix_cache import PrefixStore
from perfkit.serving.scheduler import Scheduler
from perfkit.serving.work import GenerationRequest


def fresh_engine(tiny, store: PrefixStore | None = None) -> Engine:
    model, tokenizer, _ = tiny
    engine = Engine(model, tokenizer, "cpu")
    engine.prefix_store = store
    return engine


def test_prefix_reuse_gives_the_same_tokens(tiny):
    torch.manual_seed(0)
    prefix = torch.randint(10, 2000, (48,)).tolist()
    suffixes = [torch.randint(10, 2000, (n,)).tolist() for n in (5, 9, 5)]
    plain = fresh_engine(tiny)
    store = PrefixStore(64 * 2**20, min_tokens=16)
    reusing = fresh_engine(tiny, store)
    for suffix in suffixes:
        want = plain.generate(prefix + suffix, 12, stop_at_eos=False).token_ids
        got = reusing.generate(prefix + suffix, 12, stop_at_eos=False, prefix_len=len(prefix)).token_ids
        assert got == want
    assert (store.misses, store.hits, len(store)) == (1, 2, 1)


def test_reuse_never_writes_into_the_stored_prefix(tiny):
    prefix = list(range(100, 140))
    store = PrefixStore(64 * 2**20, min_tokens=16)
    engine = fresh_engine(tiny, store)
    engine.generate(prefix + [7, 8, 9], 4, stop_at_eos=False, prefix_len=len(prefix))
    stored = [(k.clone(), v.clone()) for k, v in store.get(prefix)]
    engine.generate(prefix + [5, 6], 6, stop_at_eos=False, prefix_len=len(prefix))
    assert all(torch.equal(k, k2) and torch.equal(v, v2) for (k, v), (k2, v2) in zip(stored, store.get(prefix)))
    assert all(k.shape[2] == len(prefix) for k, _ in store.get(prefix))


def test_short_prefixes_are_not_stored_and_the_store_stays_in_its_bound(tiny):
    engine = fresh_engine(tiny, PrefixStore(64 * 2**20, min_tokens=16))
    engine.generate(list(range(50, 70)), 2, prefix_len=8)
    assert len(engine.prefix_store) == 0
    one = sum(k.nbytes + v.nbytes for k, v in _kv(tiny, 20))
    store = PrefixStore(int(2.5 * one), min_tokens=16)
    engine = fresh_engine(tiny, store)
    for start_id in (100, 200, 300, 400):
        engine.generate(list(range(start_id, start_id + 25)), 2, prefix_len=20)
    assert len(store) == 2 and store.bytes <= store.max_bytes and store.evictions == 2
    assert store.get(list(range(100, 120))) is None and store.get(list(range(400, 420))) is not None


def _kv(tiny, n: int):
    store = PrefixStore(2**30, min_tokens=1)
    fresh_engine(tiny, store).generate(list(range(1, n + 3)), 1, prefix_len=n)
    return store.get(list(range(1, n + 1)))


def test_the_server_reuses_a_shared_system_prompt(tiny, tiny_model_dir, embedder, tmp_path):  # noqa: F811
    cfg = cache_config(tmp_path, tiny_model_dir, prefix_mb=64, prefix_min_tokens=16)
    engine = fresh_engine(tiny)
    client = start(cfg, engine, embedder)
    try:
        system = {"role": "system", "content": "You answer questions about Jane Austen's novels. " * 6}
        answers = []
        for question in ("Who is Emma?", "Who is Mr. Darcy?", "Who is Emma?"):
            body = {
                "model": cfg.model.name,
                "messages": [system, {"role": "user", "content": question}],
                "max_tokens": 6,
                "ignore_eos": True,
            }
            answers.append(client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"])
        store = engine.prefix_store
        assert store is not None and (store.misses, store.hits) == (1, 2)
        assert answers[0] == answers[2]
    finally:
        client.__exit__(None, None, None)
    plain = fresh_engine(tiny)
    from perfkit.workload import chat_ids

    ids = chat_ids(plain.tokenizer, [system, {"role": "user", "content": "Who is Mr. Darcy?"}])
    assert answers[1] == plain.generate(ids, 6, stop_at_eos=False).text


def test_a_side_job_runs_between_decode_steps_not_after_the_generation(tiny):
    engine = fresh_engine(tiny)

    async def scenario() -> tuple[int, int]:
        scheduler = Scheduler(engine, "sequential")
        await scheduler.start()
        try:
            events = await scheduler.submit(GenerationRequest(tuple(range(10, 30)), 400, stop_at_eos=False))
            first = await events.__anext__()
            assert first.index == 0
            remaining = await scheduler.run_side(lambda: sum(scheduler._batch.remaining_tokens))
            count = 1
            async for _ in events:
                count += 1
            return remaining, count
        finally:
            await scheduler.stop()

    remaining, count = asyncio.run(scenario())
    assert count == 400 and remaining > 0  # the generation was still running when the side job ran
