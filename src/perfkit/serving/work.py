"""What the scheduler carries between a transport and the engine thread: a generation request, the token events it
streams back, and the hand-overs across threads (a request's entry in the batch, a side job such as an embedding)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_at_eos: bool = True
    client_key: str = ""
    stream: bool = True  # False: the caller reads the whole answer at once, so its tokens are handed over together


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its position, id, text delta, and on the last one the finish reason."""

    index: int
    token_id: int
    text: str
    finish_reason: str | None  # "stop" (end of sequence) | "length" (max_new_tokens) on the last event
    time_s: float  # seconds since `submit` was called


Produced = tuple[int, str | None, float]  # token id, finish reason on the last, seconds since submit


@dataclass(eq=False)
class BatchEntry:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    submitted: float
    events: asyncio.Queue[list[Produced] | BaseException] = field(default_factory=asyncio.Queue)
    held: list[Produced] = field(default_factory=list)  # worker side: tokens of a request that does not stream
    cancelled: bool = False

    def emit(self, item: list[Produced] | BaseException) -> None:
        """Called from the worker thread: hand tokens (or the error) to the request's own event loop."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def produce(self, token: Produced) -> None:
        """Worker thread: pass a streaming request's token on at once, hold a non-streaming one's until its last.

        Each hand-over wakes the event loop; on a machine with as many torch threads as cores that
        wake-up preempts a torch thread mid-step, so an answer nobody reads token by token is handed
        over once.
        """
        self.held.append(token)
        if self.request.stream or token[1] is not None:
            self.emit(self.held)
            self.held = []


@dataclass(eq=False)
class SideJob:
    """Work other than generation (an embedding) that runs on the engine thread at the next gap between steps."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]

    def run(self) -> None:
        loop = self.future.get_loop()
        try:
            result = self.fn(*self.args)
        except Exception as exc:
            loop.call_soon_threadsafe(_settle, self.future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, self.future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if not future.done():  # its caller may have gone away
        future.set_exception(exc) if exc is not None else future.set_result(result)
