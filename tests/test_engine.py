from pathlib import Path

import pytest

from perfkit import workload
from perfkit.running import RunningBatch

REPO = Path(__file__).resolve().parents[1]


def test_fixed_length_generation_produces_every_requested_token(tiny):
    _, tokenizer, engine = tiny
    prompt = engine.encode("The capital of France is")
    g = engine.generate(prompt, 12, stop_at_eos=False)
    assert len(g.token_ids) == g.timing.output_tokens == 12
    assert g.finish_reason == "length"
    assert g.timing.prompt_tokens == len(prompt)
    assert not set(g.token_ids) & engine.eos_ids


def test_timing_is_ordered(tiny):
    _, _, engine = tiny
    t = engine.generate(engine.encode("Hello there"), 6, stop_at_eos=False).timing
    assert 0 < t.ttft_s <= t.e2e_s
    assert t.token_times_s == sorted(t.token_times_s)
    assert t.tpot_s >= 0


def test_batch_rows_match_single_runs(tiny):
    _, _, engine = tiny
    prompts = [engine.encode(s) for s in ("a short one", "a somewhat longer prompt than the first", "x")]
    batch = engine.generate_batch(prompts, 8, stop_at_eos=False)
    for prompt, row in zip(prompts, batch):
        assert row.token_ids == engine.generate(prompt, 8, stop_at_eos=False).token_ids


def test_stop_at_eos_ends_the_row(tiny):
    _, _, engine = tiny
    eos = next(iter(engine.eos_ids))
    engine_logits = engine.pick
    try:  # force the end-of-sequence token at the third step
        calls = {"n": 0}

        def pick(logits, stop_at_eos):
            calls["n"] += 1
            out = engine_logits(logits, stop_at_eos)
            if calls["n"] == 3:
                out[:] = eos
            return out

        engine.pick = pick
        g = engine.generate(engine.encode("hi"), 10, stop_at_eos=True)
    finally:
        engine.pick = engine_logits
    assert g.finish_reason == "stop" and len(g.token_ids) == 3 and g.token_ids[-1] == eos


def test_rows_joining_a_running_batch_get_the_tokens_they_get_alone(tiny):
    _, _, engine = tiny
    prompts = {k: engine.encode(s) for k, s in enumerate(("one", "a much longer second prompt, with commas", "three it is"))}
    lengths = {0: 9, 1: 4, 2: 7}
    batch = RunningBatch(engine)
    got: dict[int, list[int]] = {k: [] for k in prompts}
    finishes = []

    def record(tokens):
        for t in tokens:
            got[t.key].append(t.token)
            if t.finish:
                finishes.append((t.key, t.finish))

    record(batch.join([(0, prompts[0], lengths[0], False)]))
    record(batch.step())
    record(batch.join([(1, prompts[1], lengths[1], False), (2, prompts[2], lengths[2], False)]))
    widths = []
    while batch:
        record(batch.step())
        widths.append(len(batch))
    for k, prompt in prompts.items():
        assert got[k] == engine.generate(prompt, lengths[k], stop_at_eos=False).token_ids
    assert sorted(finishes) == [(0, "length"), (1, "length"), (2, "length")]
    assert widths == sorted(widths, reverse=True) and widths[-1] == 0  # finished rows leave at once


def test_a_dropped_row_leaves_the_others_unchanged(tiny):
    _, _, engine = tiny
    a, b = engine.encode("the first of two prompts is long"), engine.encode("short")
    batch = RunningBatch(engine)
    got = {"a": [t.token for t in batch.join([("a", a, 6, False), ("b", b, 6, False)]) if t.key == "a"]}
    batch.drop({"b"})
    while batch:
        got["a"] += [t.token for t in batch.step()]
    assert got["a"] == engine.generate(a, 6, stop_at_eos=False).token_ids


def test_empty_prompt_is_refused(tiny):
    with pytest.raises(ValueError):
        tiny[2].generate([], 4)


def test_summary_prompts_have_the_requested_length_and_are_reproducible(tiny):
    _, tokenizer, _ = tiny
    corpus = REPO / "data" / "corpus"
    a = workload.summary_prompts(tokenizer, corpus, 4, prompt_tokens=96, seed=1)
    b = workload.summary_prompts(tokenizer, corpus, 4, prompt_tokens=96, seed=1)
    assert a == b
    assert all(abs(len(p.input_ids) - 96) <= 3 for p in a)
    assert all(p.text.startswith(workload.SUMMARY_INSTRUCTION) for p in a)


def test_heldout_text_is_persuasion(tiny):
    _, tokenizer, _ = tiny
    ids = workload.heldout_ids(tokenizer, REPO / "data" / "corpus", 256)
    assert len(ids) == 256
    assert "Elliot" in tokenizer.decode(ids)
