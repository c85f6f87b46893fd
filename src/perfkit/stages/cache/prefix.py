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

import json
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from transformers import PreTrainedTokenizerBase

from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import now
from perfkit.models import load_tokenizer
from perfkit.prefix_cache import PrefixStore
from perfkit.serving.launch import ServerHandle
from perfkit.workload import chat_ids, passages

QUESTIONS = (
    "Who is the heroine?",
    "Which passage mentions a letter?",
    "Where does the scene take place?",
    "Who speaks first here?",
    "What does the narrator think?",
    "Which character is absent?",
)
INSTRUCTION = "You are a reading assistant. Answer from these passages only.\n\n"


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


def system_turn(tokenizer: PreTrainedTokenizerBase, cfg: Config, length: int) -> str:
    """A system message whose templated turn is about `length` tokens: instructions + corpus passages."""
    text = INSTRUCTION
    for passage in passages(cfg.resolve("data/corpus"), 200):
        text += passage + "\n\n"
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > length + 64:
            break
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    overhead = len(chat_ids(tokenizer, [{"role": "system", "content": ""}]))
    return str(tokenizer.decode(ids[: max(1, length - overhead)]))


def messages(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


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


def served_on(handle: ServerHandle, cfg: Config, lengths: Sequence[int], rounds: int) -> list[PrefixRow]:
    """Through a running sequential server with a prefix store: streamed chat requests, TTFT at the client."""
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    rows = []
    with httpx.Client(base_url=handle.base_url, timeout=600) as client:
        for length in lengths:
            shared = system_turn(tokenizer, cfg, length)
            first_token(client, cfg, messages(shared, QUESTIONS[0]))  # stores the shared prefix
            cold, warm = [], []
            for r in range(rounds):
                question = QUESTIONS[1 + r % (len(QUESTIONS) - 1)]
                cold.append(first_token(client, cfg, messages(f"Session {length}-{r}. " + shared, question)))
                warm.append(first_token(client, cfg, messages(shared, question)))
            plen = len(chat_ids(tokenizer, [{"role": "system", "content": shared}]))
            rows += [PrefixRow("served", plen, False, tuple(cold)), PrefixRow("served", plen, True, tuple(warm))]
    return rows


def first_token(client: httpx.Client, cfg: Config, msgs: list[dict[str, str]]) -> float:
    """Milliseconds from sending a streamed chat request to its first content event."""
    body = {"model": cfg.model.name, "messages": msgs, "max_tokens": 2, "min_tokens": 2, "ignore_eos": True, "stream": True}
    t0 = now()
    ttft = None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if ttft is None and line.startswith("data: {"):
                json.loads(line[6:])
                ttft = (now() - t0) * 1000
    if ttft is None:
        raise RuntimeError("a streamed request produced no token")
    return ttft
