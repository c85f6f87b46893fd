"""The OpenAI HTTP API's request bodies and response objects, as vLLM serves them.

Requests are validated strictly (a string where a number belongs is a 400, not a silent cast);
unknown fields are ignored, as vLLM and OpenAI do, so clients that send `temperature`, `user` or
`stream_options` work unchanged. Decoding is greedy: sampling fields are accepted and do nothing.
vLLM's extensions `min_tokens` and `ignore_eos` let load tools force a fixed output length.
Responses carry `usage` always; a streamed response carries it on its last token's event.
"""

from __future__ import annotations

import time
import uuid
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class GenerationBody(_Request):
    model: str
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate (default: 16 for completions, the limit for chat)")
    min_tokens: int = Field(0, ge=0, description="vLLM extension: with min_tokens = max_tokens the output has a fixed length")
    ignore_eos: bool = Field(False, description="vLLM extension: never stop at end-of-sequence")
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    temperature: float | None = Field(None, ge=0, le=2, description="accepted; decoding is greedy")
    top_p: float | None = Field(None, ge=0, le=1, description="accepted; decoding is greedy")


class CompletionRequest(GenerationBody):
    prompt: str | list[int] = Field(..., description="text, or token ids used as they are")


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class ChatCompletionRequest(GenerationBody):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] = Field(..., description="one text or a list of texts")
    encoding_format: Literal["float", "base64"] = "float"


def error_body(code: int, message: str) -> dict[str, Any]:
    """`{"error": {"message", "type", "code"}}` with vLLM's type names (BadRequestError, NotFoundError, ...)."""
    try:
        kind = HTTPStatus(code).phrase.title().replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        kind = "Error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_object(rid: str, model: str, text: str, finish: str | None, use: dict[str, int] | None, chunk: bool) -> dict[str, Any]:
    """A /v1/completions response, or one streamed chunk of it (`chunk=True`, `text` = the delta)."""
    out: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if use is not None or not chunk:
        out["usage"] = use
    return out


def chat_object(
    rid: str, model: str, text: str, finish: str | None, use: dict[str, int] | None, chunk: bool, first: bool = False
) -> dict[str, Any]:
    """A /v1/chat/completions response, or one `chat.completion.chunk` (the first names the role)."""
    if chunk:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    out: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if chunk else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    if use is not None or not chunk:
        out["usage"] = use
    return out
