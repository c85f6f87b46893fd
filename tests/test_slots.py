"""The slot KV cache against transformers' dynamic cache, and the compiled decode step against the eager one."""

from __future__ import annotations

import pytest
import torch

from perfkit.engine import Engine
from perfkit.prefix_cache import PrefixStore
from perfkit.running import RunningBatch
from perfkit.slots import SlotBatch, compiled_step

PROMPTS = ("one", "a much longer second prompt, with commas and more words", "three it is", "and a fourth")
LENGTHS = (9, 4, 7, 6)


def _schedule(batch, engine: Engine) -> tuple[dict[int, list[int]], dict[int, list[torch.Tensor]]]:
    """Rows joining at different positions and leaving at different steps: each row's tokens and next-token logits."""
    prompts = [engine.encode(s) for s in PROMPTS]
    tokens: dict[int, list[int]] = {k: [] for k in range(len(PROMPTS))}
    logits: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(PROMPTS))}
    order: list[int] = []
    pick = engine.pick

    def recording_pick(out: torch.Tensor, stop_at_eos):
        for key, row in zip(order, out):
            logits[key].append(row.float().clone())
        return pick(out, stop_at_eos)

    def run(call, keys) -> None:
        order[:] = keys
        for t in call():
            tokens[t.key].append(t.token)

    engine.pick = recording_pick
    try:
        run(lambda: batch.join([(0, prompts[0], LENGTHS[0], False)]), [0])
        run(batch.step, [0])
        run(lambda: batch.join([(1, prompts[1], LENGTHS[1], False), (2, prompts[2], LENGTHS[2], False)]), [1, 2])
        run(batch.step, [r.key for r in batch.rows])
        run(batch.step, [r.key for r in batch.rows])
        run(lambda: batch.join([(3, prompts[3], LENGTHS[3], False)]), [3])
        while batch:
            run(batch.step, [r.key for r in batch.rows])
    finally:
        engine.pick = pick
    return tokens, logits


def test_the_slot_cache_gives_the_dynamic_caches_logits_as_rows_join_and_leave(tiny):
    model, tokenizer, _ = tiny
    dynamic = Engine(model, tokenizer, "cpu")
    slots = Engine(model, tokenizer, "cpu", kv_cache="slots")
    want_tokens, want_logits = _schedule(RunningBatch(dynamic), dynamic)
    batch = slots.new_batch(2)  # fewer slots than rows at once: it grows
    assert isinstance(batch, SlotBatch)
    got_tokens, got_logits = _schedule(batch, slots)
    assert got_tokens == want_tokens and [len(v) for v in got_tokens.values()] == list(LENGTHS)
    for key, rows in want_logits.items():
        assert len(got_logits[key]) == len(rows)
        for want, got in zip(rows, got_logits[key]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert batch.cache is not None and batch.cache.slots == 4  # four rows ran at once, in two slots to begin with


def test_a_row_leaving_the_middle_moves_the_last_into_its_slot_and_both_go_on_unchanged(tiny):
    model, tokenizer, engine = tiny
    slots = Engine(model, tokenizer, "cpu", kv_cache="slots")
    prompts = {k: slots.encode(s) for k, s in (("a", "the first prompt"), ("b", "a second"), ("c", "and the third, longer one"))}
    batch = slots.new_batch()
    got = {k: [] for k in prompts}
    for t in batch.join([(k, p, 8, False) for k, p in prompts.items()]):
        got[t.key].append(t.token)
    batch.drop({"a"})
    assert [r.key for r in batch.rows] == ["c", "b"]  # "c" moved into slot 0
    while batch:
        for t in batch.step():
            got[t.key].append(t.token)
    for k in ("b", "c"):
        assert got[k] == engine.generate(prompts[k], 8, stop_at_eos=False).token_ids


def test_the_prefix_store_works_with_slots(tiny):
    model, tokenizer, engine = tiny
    slots = Engine(model, tokenizer, "cpu", kv_cache="slots")
    slots.prefix_store = PrefixStore(max_bytes=64 * 2**20, min_tokens=4)
    shared = slots.encode("You are a careful assistant who answers briefly and well.")
    questions = [shared + slots.encode(q) for q in (" What is two plus two?", " Name a colour.")]
    for prompt in questions:  # the first is stored when answered, the second reuses its shared part
        got = slots.generate(prompt, 6, stop_at_eos=False)
        assert got.token_ids == engine.generate(prompt, 6, stop_at_eos=False).token_ids
    assert len(slots.prefix_store) == 2 and slots.prefix_store.hits == 1 and slots.prefix_store.matched_tokens >= len(shared)


def test_compile_needs_the_slot_cache():
    from perfkit import config

    with pytest.raises(ValueError, match="kv_cache='slots'"):
        Engine(torch.nn.Linear(1, 1), _NoTokenizer(), "cpu", compile="default")  # type: ignore[arg-type]
    with pytest.raises(config.ConfigError, match="compile 'default' needs kv_cache 'slots'"):
        config.override(config.load("baseline"), {"serving.compile": "default"})


@pytest.mark.slow
def test_the_compiled_step_gives_the_eager_steps_tokens_and_does_not_recompile_once_warmed(tiny):
    model, tokenizer, _ = tiny
    eager = Engine(model, tokenizer, "cpu", kv_cache="slots")
    torch._dynamo.reset()
    compiled = Engine(model, tokenizer, "cpu", kv_cache="slots", compile="default")
    want, _ = _schedule(eager.new_batch(), eager)
    compiled.warm_compiled(compiled.encode("warm"))  # one graph: two rows, one span
    with torch.compiler.set_stance("fail_on_recompile"):  # 1 to 4 rows come and go, spans grow: nothing compiled again
        got, _ = _schedule(compiled.new_batch(), compiled)
    assert got == want


class _NoTokenizer:
    eos_token_id = 0
    pad_token_id = 0


def test_compiled_step_off_is_the_eager_function():
    from perfkit.slots import decode_step

    assert compiled_step("off") is decode_step


def test_slots_grow_when_a_row_reaches_the_end_of_the_allocated_context(tiny, monkeypatch):
    import perfkit.slots

    monkeypatch.setattr(perfkit.slots, "MIN_CONTEXT", 8)  # a 5-token prompt and 20 tokens: 8 -> 16 -> 32 columns
    model, tokenizer, engine = tiny
    slots = Engine(model, tokenizer, "cpu", kv_cache="slots")
    prompt = slots.encode("grow the context")
    batch = slots.new_batch()
    got = [t.token for t in batch.join([("a", prompt, 20, False)])]
    contexts = {batch.cache.context}
    while batch:
        got += [t.token for t in batch.step()]
        contexts.add(batch.cache.context)
    assert got == engine.generate(prompt, 20, stop_at_eos=False).token_ids
    assert sorted(contexts) == [8, 16, 32]


def test_a_row_past_the_models_context_is_refused_by_name(tiny):
    model, tokenizer, _ = tiny
    slots = Engine(model, tokenizer, "cpu", kv_cache="slots")
    batch = slots.new_batch()
    batch.join([("a", [1] * (slots.max_context - 1), 5, False)])
    batch.step()
    with pytest.raises(ValueError, match="more than the model's context"):
        batch.step()
