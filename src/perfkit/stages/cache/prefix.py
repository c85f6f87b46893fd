"""Prefix (KV) reuse: time to first token against the shared prefix's length, offline and served.

The shared prefix is a Dify-style system turn: instructions plus retrieved passages from the
corpus, cut to `length` templated tokens; each request adds its own question. Offline, the engine
runs in this process (`Engine.generate` with a `PrefixStore`): without reuse every request
prefills the whole prompt; with reuse, after the first request stored the prefix, only the
question is prefilled. Served, a sequential server with `serving.cache.prefix_mb` (the stage's no-cache server: its
single-turn questions share no prefix) gets streamed chat requests; "without reuse" requests
start their system turn with a unique session tag, so their prefix was never stored. TTFT is the client's time to the first streamed token.
Conversations (the `multi_turn` workload, `workload.turns` turns) go to the same server: per turn, the history as it
is and opened by a session tag, the server's count of matched prompt tokens read around each warm request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from perfkit.config import Config, override
from perfkit.endpoints.base import Endpoint
from perfkit.engine import Engine
from perfkit.load.prefix import QUESTIONS, TurnTimes, messages, multi_turn_ttft, shared_prefix_ttft
from perfkit.load.workloads import multi_turn
from perfkit.models import load_tokenizer
from perfkit.prefix_cache import PrefixStore
from perfkit.workload import chat_ids, system_turn


@dataclass(frozen=True)
class PrefixRow:
    where: str  # offline | served
    prefix_tokens: int
    reuse: bool
    ttft_ms: tuple[float, ...]
    same_tokens: bool | None = None  # offline: the tokens with reuse equal those without

    @property
    def ttft_ms_mean(self) -> float:
        return sum(self.ttft_ms) / len(self.ttft_ms)


def offline(cfg: Config, engine: Engine, lengths: Sequence[int], rounds: int, exact_tokens: int) -> list[PrefixRow]:
    """Per length, interleaved: a request without reuse, then one that reuses the stored prefix; tokens compared."""
    rows = []
    for length in lengths:
        system = system_turn(engine.tokenizer, cfg.corpus_dir, length)
        engine.prefix_store = PrefixStore(2**31)
        prompts = [chat_ids(engine.tokenizer, messages(system, q)) for q in QUESTIONS]
        plen = len(chat_ids(engine.tokenizer, [{"role": "system", "content": system}]))
        engine.generate(prompts[0], 1)  # stores its prompt, the shared turn included (and warms the shapes)
        cold, warm, same = [], [], True
        for r in range(rounds):
            ids = prompts[1 + r % (len(prompts) - 1)]
            store, engine.prefix_store = engine.prefix_store, None
            plain = engine.generate(ids, exact_tokens, stop_at_eos=False)
            engine.prefix_store = store
            reused = engine.generate(ids, exact_tokens, stop_at_eos=False)
            cold.append(plain.timing.ttft_s * 1000)
            warm.append(reused.timing.ttft_s * 1000)
            same = same and plain.token_ids == reused.token_ids
        rows += [PrefixRow("offline", plen, False, tuple(cold), same), PrefixRow("offline", plen, True, tuple(warm), same)]
    engine.prefix_store = None
    return rows


def served_on(endpoint: Endpoint, cfg: Config, lengths: Sequence[int], rounds: int) -> list[PrefixRow]:
    """Through a running endpoint that reuses prompt prefixes: streamed chat requests, TTFT at the client."""
    rows = []
    for t in shared_prefix_ttft(endpoint, cfg, lengths, rounds):
        rows += [PrefixRow("served", t.prefix_tokens, False, t.cold_ms), PrefixRow("served", t.prefix_tokens, True, t.warm_ms)]
    return rows


def conversations_on(endpoint: Endpoint, cfg: Config, conversations: int, answer_tokens: int) -> list[TurnTimes]:
    """`conversations` multi-turn conversations through a perfkit server with a prefix store, per turn cold and warm."""
    from perfkit.serving.metrics import matched_prompt_tokens

    stream = multi_turn(override(cfg, {"workload.num_prompts": conversations}), load_tokenizer(cfg.resolve(cfg.model.path)))
    base_url = endpoint.facts.base_url
    assert base_url is not None, "a served endpoint has a URL"
    return multi_turn_ttft(endpoint, stream.conversations, answer_tokens, lambda: matched_prompt_tokens(base_url))
