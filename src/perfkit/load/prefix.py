"""Requests that share a prefix: time to first token with and without the shared part already cached, on any endpoint.

The shared prefix is a Dify-style system turn: instructions plus retrieved passages from the
corpus, cut to `length` templated tokens; each request adds its own question. Per length, a first
request stores the prefix; then, `pairs` times, a request whose system turn opens with a unique
session tag (so no engine can have cached it) and one with the shared turn as it was stored. Time to
first token is the client's, from `Endpoint.complete`, so the same probe measures perfkit's prefix
store and llama-server's prompt cache alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from perfkit.config import Config
from perfkit.endpoints.base import ChatRequest, Endpoint
from perfkit.models import load_tokenizer
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
class SharedPrefixTimes:
    """One prefix length: time to first token (ms) of each request without, and with, the prefix cached."""

    prefix_tokens: int  # the system turn, templated
    cold_ms: tuple[float, ...]
    warm_ms: tuple[float, ...]


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


def shared_prefix_ttft(endpoint: Endpoint, cfg: Config, lengths: Sequence[int], pairs: int) -> list[SharedPrefixTimes]:
    """Per length, `pairs` requests without and with the shared system turn cached, interleaved."""
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    out = []
    for length in lengths:
        shared = system_turn(tokenizer, cfg, length)
        first_token(endpoint, messages(shared, QUESTIONS[0]))  # stores the shared prefix
        cold, warm = [], []
        for r in range(pairs):
            question = QUESTIONS[1 + r % (len(QUESTIONS) - 1)]
            cold.append(first_token(endpoint, messages(f"Session {length}-{r}. " + shared, question)))
            warm.append(first_token(endpoint, messages(shared, question)))
        plen = len(chat_ids(tokenizer, [{"role": "system", "content": shared}]))
        out.append(SharedPrefixTimes(plen, tuple(cold), tuple(warm)))
    return out


def first_token(endpoint: Endpoint, msgs: list[dict[str, str]]) -> float:
    """Milliseconds from sending a streamed chat request (two tokens) to its first content chunk."""
    answer = endpoint.complete(ChatRequest(tuple(msgs), 2))
    if not answer.ok or answer.ttft_s is None:
        raise RuntimeError(f"a streamed request produced no token: HTTP {answer.status}, {answer.error}")
    return answer.ttft_s * 1000
