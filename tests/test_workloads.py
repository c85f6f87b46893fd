"""The request streams by workload kind: reproducible from their seed, of the declared shape, and sent as declared."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from perfkit import config
from perfkit.config import LengthDistribution
from perfkit.load.workloads import read_trace, request_stream, served_stream

REPO = Path(__file__).resolve().parents[1]


def _cfg(root: Path, **workload):
    cfg = config.load("baseline", smoke=True, root=root)
    return config.override(cfg, {f"workload.{k}": v for k, v in workload.items()})


def _tokenizer(cfg):
    from perfkit.models import load_tokenizer

    return load_tokenizer(cfg.resolve(cfg.model.path))


def test_length_distributions_have_their_declared_moments_and_bounds() -> None:
    import random

    from perfkit.load.workloads import draw_lengths

    rng = random.Random(1)
    assert set(draw_lengths(LengthDistribution(kind="fixed", mean=64), 50, rng)) == {64}
    uniform = draw_lengths(LengthDistribution(kind="uniform", mean=100, spread=0.5), 4000, rng)
    assert 50 <= min(uniform) and max(uniform) <= 150 and statistics.fmean(uniform) == pytest.approx(100, rel=0.03)
    normal = draw_lengths(LengthDistribution(kind="normal", mean=200, spread=0.1), 4000, rng)
    assert statistics.fmean(normal) == pytest.approx(200, rel=0.02) and statistics.stdev(normal) == pytest.approx(20, rel=0.1)
    lognormal = draw_lengths(LengthDistribution(kind="lognormal", mean=128, spread=0.6, max=2000), 4000, rng)
    assert statistics.median(lognormal) == pytest.approx(128, rel=0.06) and max(lognormal) <= 2000
    assert min(draw_lengths(LengthDistribution(kind="normal", mean=10, spread=3, min=4), 500, rng)) == 4  # clipped, not negative


def test_the_default_single_stream_is_todays_and_a_stream_is_reproducible_from_its_seed(perfkit_root: Path) -> None:
    assert served_stream(_cfg(perfkit_root)) is None  # single, fixed lengths: the stages' prompts as before
    cfg = _cfg(perfkit_root, kind="shared_prefix", num_prompts=40, prefix_tokens=128, prefix_share=0.5)
    tok = _tokenizer(cfg)
    first, again = request_stream(cfg, tok), request_stream(cfg, tok)
    assert first == again
    other = request_stream(config.override(cfg, {"workload.seed": 1}), tok)
    assert [r.shares_prefix for r in other.requests] != [r.shares_prefix for r in first.requests]


def test_shared_prefix_opens_the_chosen_share_with_one_system_turn(perfkit_root: Path) -> None:
    cfg = _cfg(perfkit_root, kind="shared_prefix", num_prompts=60, prefix_tokens=128, prefix_share=0.5)
    stream = request_stream(cfg, _tokenizer(cfg))
    shared = [r for r in stream.requests if r.shares_prefix]
    assert 18 <= len(shared) <= 42  # 60 draws at 50%: well inside 3 standard deviations
    assert len({json.dumps(r.messages[0]) for r in shared}) == 1 and shared[0].messages[0]["role"] == "system"
    assert all(len(r.messages) == 1 for r in stream.requests if not r.shares_prefix)
    assert min(r.prompt_tokens for r in shared) > max(r.prompt_tokens for r in stream.requests if not r.shares_prefix)


def test_multi_turn_conversations_have_the_declared_turns_and_lengths(perfkit_root: Path) -> None:
    out = LengthDistribution(kind="uniform", mean=8, spread=0.5)
    cfg = _cfg(perfkit_root, kind="multi_turn", num_prompts=5, turns=4, output_lengths=out.model_dump())
    stream = request_stream(cfg, _tokenizer(cfg))
    assert len(stream.conversations) == 5 and all(len(c.turns) == 4 == len(c.max_tokens) for c in stream.conversations)
    assert all(4 <= n <= 12 for c in stream.conversations for n in c.max_tokens)
    assert all(c.turns[0].startswith("Summarize") and not c.turns[1].startswith("Summarize") for c in stream.conversations)


def _mooncake(path: Path) -> Path:
    rows = [
        {"timestamp": 1000, "input_length": 600, "output_length": 4, "hash_ids": [0, 5]},
        {"timestamp": 3000, "input_length": 600, "output_length": 6, "hash_ids": [0, 6]},  # shares block 0 with the first
        {"timestamp": 2000, "input_length": 100, "output_length": 5, "hash_ids": [7]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_trace_keeps_its_order_and_relative_times_at_the_speed_up_and_its_shared_blocks(perfkit_root: Path, tmp_path: Path) -> None:
    trace = _mooncake(tmp_path / "t.jsonl")
    cfg = _cfg(perfkit_root, kind="trace", trace=str(trace), trace_speedup=2.0, max_prompt_tokens=580)
    stream = request_stream(cfg, _tokenizer(cfg))
    assert [r.at_s for r in stream.requests] == [0.0, 0.5, 1.0]  # sorted by arrival, from the first, halved
    assert [r.max_tokens for r in stream.requests] == [4, 5, 6]
    first, last = stream.requests[0].messages[0]["content"], stream.requests[2].messages[0]["content"]
    assert first[:300] == last[:300] and first != last  # hash id 0 is the same text in both
    assert stream.notes and stream.notes[0].startswith("2 of 3 trace inputs clipped to 580")


def test_burstgpt_rows_without_output_are_dropped_and_the_shipped_trace_is_diurnal(tmp_path: Path) -> None:
    csv = tmp_path / "b.csv"
    csv.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,10,3,13,Conversation log\n"
                   "7,ChatGPT,12,0,12,Conversation log\n9,GPT-4,20,8,28,API log\n")  # fmt: skip
    records = read_trace(csv, "burstgpt")
    assert [(r.at_s, r.input_tokens, r.output_tokens) for r in records] == [(0.0, 10, 3), (4.0, 20, 8)]
    shipped = read_trace(REPO / "data" / "traces" / "diurnal.jsonl", "mooncake")
    day = shipped[-1].at_s
    night = sum(r.at_s < day / 6 or r.at_s > 5 * day / 6 for r in shipped)
    noon = sum(2 * day / 6 <= r.at_s <= 4 * day / 6 for r in shipped)
    assert len(shipped) > 100 and noon > 2 * night  # the third of the day around noon outnumbers the night


def test_multi_turn_sends_each_turn_with_the_history_and_a_trace_at_its_times(perfkit_root: Path, tmp_path: Path) -> None:
    from perfkit.load.runner import run_load, served_prompts
    from perfkit.serving.launch import launch

    cfg = _cfg(perfkit_root, kind="multi_turn", num_prompts=2, turns=3, think_time_s=0.0)
    stream = request_stream(cfg, _tokenizer(cfg))
    prompts = served_prompts(cfg)
    with launch(cfg, probe_cold_start=False) as server:
        run = run_load(cfg, server, prompts, tmp_path / "mt", users=2, requests=6, warmup_requests=0, stream=stream)
        rows = sorted(run.timings, key=lambda r: (r.conversation, r.turn))
        assert len(rows) == 6 and all(r.ok and r.conversation is not None for r in rows)
        by_conversation = {c: [r for r in rows if r.conversation == c] for c in {r.conversation for r in rows}}
        assert all([r.turn for r in turns] == list(range(len(turns))) for turns in by_conversation.values())  # in order
        assert max(len(turns) for turns in by_conversation.values()) == 3  # the budget let at least one finish
        for turns in by_conversation.values():
            lengths = [r.prompt_tokens for r in turns]
            assert all(a < b for a, b in zip(lengths, lengths[1:]))  # each turn re-sends the growing history
        # open loop: conversations arrive at 3 / 3 turns = 1 per second, each turn 1.5 s after the previous answer, so
        # that they overlap (one lasts over 3 s) and those started later answer under more load
        paused = request_stream(_cfg(perfkit_root, kind="multi_turn", num_prompts=2, turns=3, think_time_s=1.5), _tokenizer(cfg))
        arrived = run_load(cfg, server, prompts, tmp_path / "open", mode="open", rate_rps=3.0, requests=6, warmup_requests=0, stream=paused)
        opened = sorted(arrived.timings, key=lambda r: (r.conversation, r.turn))
        assert all(r.ok and r.conversation is not None for r in opened)
        # Measured from the last turn of the first conversation started after the first last turn was claimed (claims
        # are numbered in order): what was sent before is warm-up, and 6 turns are measured from there.
        ordered = sorted(opened, key=lambda r: r.index)
        first_last = next(r.index for r in ordered if r.turn == 2)
        opened_at = {r.conversation: r.index for r in ordered if r.turn == 0}
        filled = next(r.index for r in ordered if r.turn == 2 and opened_at[r.conversation] > first_last)
        assert all(r.warmup == (r.index < filled) for r in opened) and filled > first_last >= 2
        assert sum(not r.warmup for r in opened) == 6 and arrived.summary.requests == 6
        assert arrived.wall_s < cfg.load.duration_s  # it stopped at its count, not at the time limit
        per = {c: [r for r in opened if r.conversation == c] for c in {r.conversation for r in opened}}
        assert all([r.turn for r in turns] == list(range(len(turns))) for turns in per.values())
        assert any(len(turns) > 1 for turns in per.values())  # a conversation went on to its next turn
        assert all(a.prompt_tokens < b.prompt_tokens for turns in per.values() for a, b in zip(turns, turns[1:]))
        trace_cfg = _cfg(perfkit_root, kind="trace", trace=str(_mooncake(tmp_path / "t.jsonl")), trace_speedup=4.0)
        trace = request_stream(trace_cfg, _tokenizer(trace_cfg))
        replay = run_load(trace_cfg, server, prompts, tmp_path / "tr", mode="open", requests=3, warmup_requests=0, stream=trace)
        sends = sorted(replay.timings, key=lambda r: r.index)
        assert [r.output_tokens for r in sends] == [4, 5, 6]  # the trace's lengths, in its order
        assert [r.t_send - sends[0].t_send for r in sends] == pytest.approx([0.0, 0.25, 0.5], abs=0.05)  # scheduled times
