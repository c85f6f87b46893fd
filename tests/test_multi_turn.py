"""Multi-turn conversations through an endpoint: what each turn sends, cold and warm, and the figures made of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from perfkit.endpoints.base import ChatRequest, Completion
from perfkit.load.prefix import TurnTimes, multi_turn_ttft
from perfkit.load.workloads import Conversation
from perfkit.stages.cache.result import CacheResult, Redis


class ScriptedEndpoint:
    """Answers "answer <n>"; the first token comes after 100 ms for a tagged (cold) history, 20 ms otherwise."""

    def __init__(self) -> None:
        self.sent: list[tuple[tuple[Mapping[str, str], ...], int]] = []

    def complete(self, request: ChatRequest) -> Completion:
        self.sent.append((request.messages, request.max_tokens))
        cold = request.messages[0]["content"].startswith("Session ")
        words = sum(len(m["content"].split()) for m in request.messages)
        return Completion(200, (0.1 if cold else 0.02, 0.2), 0.2, f"answer {len(self.sent)}", prompt_tokens=words)


def test_each_turn_resends_the_history_with_the_answers_and_a_tagged_cold_copy() -> None:
    endpoint = ScriptedEndpoint()
    conversations = [Conversation(("a b", "c", "d"), (4, 4, 4)), Conversation(("e", "f g", "h"), (4, 4, 4))]
    matched = iter(range(0, 1000, 5))  # the counter moves by 5 tokens across each warm request
    turns = multi_turn_ttft(endpoint, conversations, answer_tokens=7, reused=lambda: float(next(matched)))  # type: ignore[arg-type]
    assert [t.turn for t in turns] == [1, 2, 3] and all(len(t.warm_ms) == len(t.cold_ms) == 2 for t in turns)
    assert all(t.cold_ms == (100.0, 100.0) and t.warm_ms == (20.0, 20.0) and t.reused_tokens == (5.0, 5.0) for t in turns)
    warm = [m for m, n in endpoint.sent if n == 7]
    cold = [m for m, n in endpoint.sent if n != 7]
    assert len(warm) == len(cold) == 6
    # conversation 0's third turn: its two earlier turns, each followed by the answer the endpoint gave to it
    third = [m for m in warm if m[0]["content"] == "a b" and len(m) == 5][0]
    assert [x["role"] for x in third] == ["user", "assistant", "user", "assistant", "user"]
    assert [x["content"] for x in third[::2]] == ["a b", "c", "d"] and all(x["content"].startswith("answer ") for x in third[1::2])
    assert {m[0]["content"] for m in cold} == {f"Session {c}-{t}. " + ("a b", "e")[c] for c in (0, 1) for t in range(3)}
    assert turns[2].prompt_tokens[0] == sum(len(x["content"].split()) for x in third)


def _result(turns: tuple[TurnTimes, ...]) -> CacheResult:
    return CacheResult(
        runs=(), semantic=None, sweep=(), redis=Redis(), prefix=(), claim_variant="redis-exact", claim_target=0.5,
        threshold=0.9, max_tokens=16, load_avg=(0.0, 0.0), turns=turns,
    )  # fmt: skip


def test_the_turn_figures_count_turns_two_on_and_the_matched_share_of_their_prompts() -> None:
    turns = (
        TurnTimes(1, (100, 100), (50.0, 50.0), (50.0, 50.0), (0.0, 0.0)),  # nothing to reuse yet: left out
        TurnTimes(2, (200, 200), (100.0, 100.0), (20.0, 20.0), (150.0, 150.0)),
        TurnTimes(3, (300, 300), (150.0, 150.0), (30.0, 30.0), (250.0, 250.0)),
    )
    s = _result(turns).summary()
    assert s["multi_turn_turns"] == 3 and s["multi_turn_conversations"] == 2
    assert s["multi_turn_ttft_cut_pct"] == pytest.approx(80.0) and s["multi_turn_matched_pct"] == pytest.approx(80.0)
    assert s["multi_turn_ttft_cut_pct_ci_low"] <= 80.0 <= s["multi_turn_ttft_cut_pct_ci_high"]
    assert s["multi_turn_prompt_tokens_last"] == 300
    table = _result(turns).tables()["turns"]
    assert len(table) == 6 and table.loc[table["reuse"] & (table["turn"] == 2), "matched_pct"].item() == pytest.approx(75.0)
    unknown = tuple(dataclasses.replace(t, reused_tokens=()) for t in turns)  # an endpoint that does not say
    assert "multi_turn_matched_pct" not in _result(unknown).summary()
    assert "multi_turn_ttft_cut_pct" not in _result(turns[:1]).summary()  # one turn: no history to reuse
