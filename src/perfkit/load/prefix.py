"""Requests that share a prefix: time to first token with and without the shared part already cached, on any endpoint.

The shared prefix is a Dify-style system turn: instructions plus retrieved passages from the
corpus, cut to `length` templated tokens; each request adds its own question. Per length, a first
request stores the prefix; then, `pairs` times, a request whose system turn opens with a unique
session tag (so no engine can have cached it) and one with the shared turn as it was stored. Time to
first token is the client's, from `Endpoint.complete`, so the same probe measures perfkit's prefix
store and llama-server's prompt cache alike.

Conversations (`multi_turn_ttft`) re-send their whole history at every turn, the model's earlier answers
included: an engine that keeps the previous turn's prompt and answer prefills only the new user turn.
Per turn, the history as it is (warm) and the same history opened by a unique session tag (cold: no
engine can hold any of it past the template's first tokens) are sent, interleaved; the warm request's
answer (fixed length) joins the history for the next turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from perfkit.config import Config
from perfkit.endpoints.base import ChatRequest, Endpoint
from perfkit.load.workloads import Conversation
from perfkit.models import load_tokenizer
from perfkit.workload import chat_ids, system_turn

QUESTIONS = (
    "Who is the heroine?",
    "Which passage mentions a letter?",
    "Where does the scene take place?",
    "Who speaks first here?",
    "What does the narrator think?",
    "Which character is absent?",
)


@dataclass(frozen=True)
class SharedPrefixTimes:
    """One prefix length: time to first token (ms) of each request without, and with, the prefix cached."""

    prefix_tokens: int  # the system turn, templated
    cold_ms: tuple[float, ...]
    warm_ms: tuple[float, ...]


def messages(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def shared_prefix_ttft(endpoint: Endpoint, cfg: Config, lengths: Sequence[int], pairs: int) -> list[SharedPrefixTimes]:
    """Per length, `pairs` requests without and with the shared system turn cached, interleaved."""
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    out = []
    for length in lengths:
        shared = system_turn(tokenizer, cfg.corpus_dir, length)
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


@dataclass(frozen=True)
class TurnTimes:
    """One turn of every conversation: the history sent (prompt tokens), time to first token (ms) without and with
    the earlier turns cached, and the prompt tokens the engine reused on the warm requests where it says (else ())."""

    turn: int  # from 1
    prompt_tokens: tuple[int, ...]
    cold_ms: tuple[float, ...]
    warm_ms: tuple[float, ...]
    reused_tokens: tuple[float, ...] = ()


ReuseCounter = Callable[[], float]  # prompt tokens the engine has reused since it started


def multi_turn_ttft(
    endpoint: Endpoint, conversations: Sequence[Conversation], answer_tokens: int, reused: ReuseCounter | None = None
) -> list[TurnTimes]:
    """Per turn of each conversation, the history sent cold and warm (order alternating by turn), the warm answer kept."""
    histories: list[list[dict[str, str]]] = [[] for _ in conversations]
    turns = min(len(c.turns) for c in conversations)
    out = []
    for t in range(turns):
        tokens, cold, warm, matched = [], [], [], []
        for c, conversation in enumerate(conversations):
            history = histories[c] + [{"role": "user", "content": conversation.turns[t]}]
            tagged = [{**history[0], "content": f"Session {c}-{t}. " + history[0]["content"]}, *history[1:]]
            if t % 2:
                cold.append(first_token(endpoint, tagged))
            before = reused() if reused is not None else 0.0
            answer = endpoint.complete(ChatRequest(tuple(history), answer_tokens))
            if not answer.ok or answer.ttft_s is None:
                raise RuntimeError(f"turn {t + 1} of conversation {c} produced no token: HTTP {answer.status}, {answer.error}")
            if reused is not None:
                matched.append(reused() - before)
            warm.append(answer.ttft_s * 1000)
            tokens.append(answer.prompt_tokens or 0)
            if not t % 2:
                cold.append(first_token(endpoint, tagged))
            histories[c] = history + [{"role": "assistant", "content": answer.text}]
        out.append(TurnTimes(t + 1, tuple(tokens), tuple(cold), tuple(warm), tuple(matched)))
    return out
