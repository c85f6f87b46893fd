"""The OpenAI HTTP API's request bodies and response objects, as vLLM serves them.

Requests are validated strictly (a string where a number belongs is a 400, not a silent cast);
unknown fields are ignored, as vLLM and OpenAI do, so clients that send `temperature` or `user`
work unchanged. Decoding is greedy: sampling fields are accepted and do nothing. vLLM's extensions
`min_tokens` and `ignore_eos` let load tools force a fixed output length.

A chat message's content is a string or, as the OpenAI API also allows (guidellm, the openai SDK's
newer helpers and most chat front ends send it so), a list of content parts: text parts are joined
in order with a newline, as vLLM joins them; any other part type (image_url, input_audio, ...) is
refused with a 400 that names it. Every list and number a client chooses is bounded here, so a
request's size is known before any work is done.

Responses carry `usage` always; a streamed response carries it only when asked
(`stream_options.include_usage`), as OpenAI sends it: one last chunk with empty `choices`.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from http import HTTPStatus
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MESSAGES = 1024  # messages in one chat request
MAX_CONTENT_PARTS = 256  # content parts in one message
MAX_EMBEDDING_INPUTS = 2048  # texts in one embeddings request: OpenAI's own limit
MAX_PROMPT_IDS = 32_768  # token ids in one completions prompt: the largest context params.yaml allows
MAX_TOKENS = 32_768  # the largest serving.max_new_tokens_limit; the served limit is in the OpenAPI schema


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="send usage in a last chunk with empty choices, before [DONE]")


class GenerationBody(_Request):
    model: str
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="tokens to generate (default: 16 for completions, the limit for chat)"
    )
    min_tokens: int = Field(
        0, ge=0, le=MAX_TOKENS, description="vLLM extension: with min_tokens = max_tokens the output has a fixed length"
    )
    ignore_eos: bool = Field(False, description="vLLM extension: never stop at end-of-sequence")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    temperature: float | None = Field(None, ge=0, le=2, description="accepted; decoding is greedy")
    top_p: float | None = Field(None, ge=0, le=1, description="accepted; decoding is greedy")


class CompletionRequest(GenerationBody):
    prompt: str | Annotated[list[int], Field(min_length=1, max_length=MAX_PROMPT_IDS)] = Field(
        ..., description="text, or token ids used as they are"
    )


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] = Field(
        ..., description="a string, or text parts joined in order with a newline"
    )

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind != "text":
                    raise ValueError(f"content part type {kind!r} is not supported: this server reads text parts only")
        return value

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)

    def for_template(self) -> dict[str, str]:
        """The message as a chat template reads it: role and one content string."""
        return {"role": self.role, "content": self.text}


class ChatCompletionRequest(GenerationBody):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="OpenAI's newer name for max_tokens")


class EmbeddingRequest(_Request):
    model: str
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)] = Field(
        ..., description="one text or a list of texts"
    )
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
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def wants_usage_chunk(body: GenerationBody) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def usage_chunk(rid: str, model: str, chat: bool, use: dict[str, int]) -> dict[str, Any]:
    """The stream's last chunk under `stream_options.include_usage`: no choices, the request's usage."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [], "usage": use}


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


def embedding_json(vectors: np.ndarray, encoding_format: str, model: str, prompt_tokens: int) -> bytes:
    """A /v1/embeddings response body: floats as JSON numbers, or base64 of little-endian float32."""
    data = []
    for i, v in enumerate(vectors):
        value: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding_format == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    use = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": use}, separators=(",", ":")).encode()
