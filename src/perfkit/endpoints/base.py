"""The endpoint protocol and the values that cross it.

A request is chat messages and an output length (`ChatRequest`); an answer is a `Completion`: the
arrival time of every streamed chunk from the moment the request left, the text, the token counts
the endpoint reported (`usage`), and the error when there was one (an HTTP status other than 200,
a stream cut short). An endpoint also says what it is (`EndpointFacts`, kept in a stage's result):
which engine answers, which model, whether it takes a fixed output length, and whether perfkit
started its process, which is what the server-side figures (memory, CPU, cold start) need; for an
endpoint perfkit did not start they are `NOT_AVAILABLE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from perfkit.serving.launch import ColdStart

NOT_AVAILABLE = "not available for an endpoint perfkit did not start"


@dataclass(frozen=True)
class ChatRequest:
    """Chat messages and how many tokens to answer; `fixed_length` asks for exactly `max_tokens` (vLLM's
    `min_tokens` and `ignore_eos`) where the endpoint takes them."""

    messages: tuple[Mapping[str, str], ...]
    max_tokens: int
    fixed_length: bool = True


@dataclass(frozen=True)
class Completion:
    """One answer as the client saw it: every content chunk's arrival (seconds from send), the text, usage, errors."""

    status: int  # 200, or the HTTP status of the refusal (an in-process failure is 500)
    chunk_times_s: tuple[float, ...]
    e2e_s: float
    text: str = ""
    prompt_tokens: int | None = None  # as the endpoint's usage said
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None  # None when the answer came whole

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def ttft_s(self) -> float | None:
        return self.chunk_times_s[0] if self.chunk_times_s else None

    @property
    def output_tokens(self) -> int:
        """Tokens answered: the endpoint's usage, else one per content chunk."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times_s)


@dataclass(frozen=True)
class EndpointFacts:
    """What a result keeps of the endpoint it measured."""

    kind: str  # "perfkit" | "llama-server" | "openai" | "in-process"
    engine: str  # which engine answers, in words
    model: str  # the model id requests ask for
    models: tuple[str, ...]  # what the endpoint lists
    base_url: str | None  # None: no URL (the engine in this process)
    fixed_length: bool  # takes min_tokens/ignore_eos
    started_by_perfkit: bool  # its process is perfkit's child: memory, CPU and cold start can be measured
    api_key_env: str | None = None  # the environment variable holding its key (never the key)

    def describe(self) -> str:
        where = f" at {self.base_url}" if self.base_url else ""
        length = "fixed output length" if self.fixed_length else "free output length (min_tokens/ignore_eos refused)"
        return f"{self.engine}{where} serving {', '.join(self.models)}; measured model {self.model}; {length}"

    def as_metrics(self) -> dict[str, Any]:
        """The keys a stage's summary carries about its endpoint."""
        return {
            "endpoint": self.kind,
            "endpoint_engine": self.engine,
            "endpoint_url": self.base_url or "in-process",
            "endpoint_model": self.model,
            "fixed_output_length": self.fixed_length,
        }


@runtime_checkable
class Endpoint(Protocol):
    """Anything perfkit can send a chat request to and time."""

    @property
    def facts(self) -> EndpointFacts: ...

    @property
    def pid(self) -> int | None:
        """The serving process to sample (memory, CPU); None where perfkit did not start one."""
        ...

    @property
    def start(self) -> ColdStart | None:
        """Its measured start, spawn to first answer; None where perfkit did not start it or did not probe it."""
        ...

    def complete(self, request: ChatRequest) -> Completion:
        """Send one request, stream its answer, time every chunk; a refusal or a broken stream is a Completion with
        its status and error, never an exception (an unreachable endpoint raises)."""
        ...
