"""The reference engine in this process, as an endpoint: no server, no network, the same request and answer.

What it times is the engine alone (chat template, prefill, decode): beside the served endpoints it
shows what serving adds. A token is a chunk; its time is when the engine produced it, measured from
the call. It has no URL, so no load generator can reach it, and no process of its own to sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from perfkit.endpoints.base import ChatRequest, Completion, EndpointFacts
from perfkit.engine import Engine
from perfkit.provenance import engine_form
from perfkit.workload import chat_ids


def malformed(request: ChatRequest) -> str | None:
    """What is wrong with a request, in the words a server's 400 would use; None when it can run."""
    if not request.messages:
        return "messages: at least one message"
    for i, message in enumerate(request.messages):
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            return f"messages[{i}]: needs a 'role' and a 'content' string"
    return None if request.max_tokens >= 1 else f"max_tokens = {request.max_tokens}: at least 1"


@dataclass(frozen=True)
class InProcessEndpoint:
    engine: Engine
    model: str
    pid = None  # no process of its own: nothing server-side is measured
    start = None

    @property
    def facts(self) -> EndpointFacts:
        form = engine_form(self.engine.kv_cache, self.engine.compile, self.engine.prepacked)
        return EndpointFacts("in-process", f"perfkit reference engine in process ({form})", self.model, (self.model,), None, True, False)

    def complete(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        problem = malformed(request)
        if problem:  # refused as a server refuses a malformed body
            return Completion(400, (), time.perf_counter() - started, error=problem)
        try:
            ids = chat_ids(self.engine.tokenizer, [dict(m) for m in request.messages])
            out = self.engine.generate(ids, request.max_tokens, stop_at_eos=not request.fixed_length)
        except (ValueError, RuntimeError) as exc:  # a prompt the model cannot take: a failed answer, as a server's 4xx/5xx
            return Completion(500, (), time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
        return Completion(
            200, tuple(out.timing.token_times_s), time.perf_counter() - started, out.text, len(ids), len(out.token_ids), out.finish_reason
        )
