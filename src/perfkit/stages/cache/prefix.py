"""Prefix (KV) reuse: time to first token against the shared prefix's length, offline and served.

The shared prefix is a Dify-style system turn: instructions plus retrieved passages from the
corpus, cut to `length` templated tokens; each request adds its own question. Offline, the engine
runs in this process (`Engine.generate` with a `PrefixStore`): without reuse every request
prefills the whole prompt; with reuse, after the first request stored the prefix, only the
question is prefilled. Served, a sequential server with `serving.cache.prefix_mb` (the stage's no-cache server: its
single-turn questions share no prefix) gets streamed chat requests; "without reuse" requests
start their system turn with a unique session tag, so their prefix was never stored. TTFT is the client's time to the first streamed token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from perfkit.config import Config
from perfkit.endpoints.base import Endpoint
from perfkit.engine import Engine
from perfkit.load.prefix import QUESTIONS, messages, shared_prefix_ttft, system_turn
from perfkit.prefix_cache import PrefixStore
from perfkit.workload import chat_ids


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
    from perfkit.prefix_cache import system_prefix_len

    rows = []
    for length in lengths:
        system = system_turn(engine.tokenizer, cfg, length)
        engine.prefix_store = PrefixStore(2**31)
        prompts = [chat_ids(engine.tokenizer, messages(system, q)) for q in QUESTIONS]
        plen = system_prefix_len(engine, messages(system, QUESTIONS[0]), prompts[0])
        engine.generate(prompts[0], 1, prefix_len=plen)  # stores the prefix (and warms the shapes)
        cold, warm, same = [], [], True
        for r in range(rounds):
            ids = prompts[1 + r % (len(prompts) - 1)]
            store, engine.prefix_store = engine.prefix_store, None
            plain = engine.generate(ids, exact_tokens, stop_at_eos=False)
            engine.prefix_store = store
            reused = engine.generate(ids, exact_tokens, stop_at_eos=False, prefix_len=plen)
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
