"""The clients behind `Endpoint.complete`: an OpenAI chat stream over HTTP, and perfkit's GenerateStream over gRPC.

The HTTP client reads server-sent events line by line as they arrive (a buffered read would sit on
the first tokens and make TTFT equal E2E), times each event that carries text, takes the token
counts from the `usage` event (`stream_options.include_usage`) and counts a stream that ends
without `data: [DONE]` as an error. The load generator (the locustfile, which may not import
perfkit) reads the same events the same way.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from perfkit.endpoints.base import ChatRequest, Completion

CHAT_ROUTE = "/v1/chat/completions"
GRPC_STATUS = {"INVALID_ARGUMENT": 400, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}  # as HTTP


def chat_body(model: str, request: ChatRequest, fixed_length: bool) -> dict[str, Any]:
    """The OpenAI chat body for `request`; `min_tokens`/`ignore_eos` only where the endpoint takes them."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.fixed_length and fixed_length:
        body |= {"min_tokens": request.max_tokens, "ignore_eos": True}
    return body


def openai_chat(client: httpx.Client, body: dict[str, Any]) -> Completion:
    """POST `body` to the chat route of `client`'s base URL and time the streamed answer."""
    sent = time.perf_counter()
    times: list[float] = []
    text: list[str] = []
    usage: dict[str, Any] = {}
    finish = None
    with client.stream("POST", CHAT_ROUTE, json=body) as r:
        if r.status_code != 200:
            r.read()
            return Completion(r.status_code, (), time.perf_counter() - sent, error=r.text[:200] or f"HTTP {r.status_code}")
        done = False
        try:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or ():
                    if content := (choice.get("delta") or {}).get("content"):
                        times.append(time.perf_counter() - sent)
                        text.append(content)
                    finish = choice.get("finish_reason") or finish
        except (httpx.HTTPError, ValueError) as exc:
            return Completion(200, tuple(times), time.perf_counter() - sent, "".join(text), error=f"stream broken: {exc}")
    error = None if done else "the stream ended without data: [DONE]"
    return Completion(
        200,
        tuple(times),
        time.perf_counter() - sent,
        "".join(text),
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        finish,
        error,
    )


def complete_over_http(
    base_url: str, model: str, request: ChatRequest, *, fixed_length: bool, timeout_s: float, headers: dict[str, str] | None = None
) -> Completion:
    """`request` to the OpenAI chat route at `base_url`, timed: what every HTTP endpoint's `complete` is."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s) as client:
        return openai_chat(client, chat_body(model, request, fixed_length))


def grpc_chat(address: str, request: ChatRequest, max_message_bytes: int, timeout_s: float) -> Completion:
    """perfkit's GenerateStream RPC at `address`, timed per token event."""
    import grpc

    from perfkit.serving import perfkit_pb2 as pb
    from perfkit.serving import perfkit_pb2_grpc as pb_grpc
    from perfkit.serving.grpc_client import channel

    message = pb.GenerateRequest(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in request.messages],
        max_tokens=request.max_tokens,
        ignore_eos=request.fixed_length,
    )
    sent = time.perf_counter()
    times: list[float] = []
    text: list[str] = []
    finish = None
    with channel(address, max_message_bytes) as ch:
        try:
            for event in pb_grpc.PerfkitStub(ch).GenerateStream(message, timeout=timeout_s):
                times.append(time.perf_counter() - sent)
                text.append(event.text)
                finish = event.finish_reason or finish
        except grpc.RpcError as exc:
            status = GRPC_STATUS.get(exc.code().name, 500)
            return Completion(status, tuple(times), time.perf_counter() - sent, "".join(text), error=str(exc.details()))
    return Completion(200, tuple(times), time.perf_counter() - sent, "".join(text), None, len(times), finish)
