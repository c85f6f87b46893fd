"""What the REST server enforces: request bodies parsed off the event loop, and declared in its OpenAPI schema.

Parsing. A 16 MiB body of token ids is eight million JSON numbers: `json.loads` plus pydantic's
strict validation of it take seconds of CPU, all of it holding the GIL (a worker thread would not
help: C and Rust parsers never let go of it), so every other client (and `/health`) would wait that
long. `parsed(Model)` first counts the body's commas (a scan at memory speed) and refuses one
with more than MAX_JSON_VALUES values (413, the bound in the message) -- more than any request
within the schema's bounds and a model's context can hold -- then validates the rest in a worker
thread; a refusal is the same 400 FastAPI's own validation gives.

Declaring. The generated schema says what a valid request is, so a client (or a fuzzer) can
produce one: the served model ids as an enum per route, `max_tokens` up to
`serving.max_new_tokens_limit`, prompt token ids within the vocabulary and the context, and the
list bounds of `schemas`. A rule the schema cannot state (`min_tokens` is 0 or `max_tokens`
unless `ignore_eos`; prompt plus output within the context) is still checked and answered 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from perfkit.config import Config
from perfkit.serving import schemas

M = TypeVar("M", bound=BaseModel)
# Commas in one body: 4x the longest token-id prompt. A text prompt with more commas than this has
# more tokens than any context params.yaml allows; validating this many values takes ~50 ms here.
MAX_JSON_VALUES = 4 * schemas.MAX_PROMPT_IDS
BODIES: tuple[type[BaseModel], ...] = (schemas.CompletionRequest, schemas.ChatCompletionRequest, schemas.EmbeddingRequest)


def parsed(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A FastAPI dependency: the request body as `model`, parsed and validated in a worker thread."""

    async def dependency(request: Request) -> M:
        raw = await request.body()
        if raw.count(b",") > MAX_JSON_VALUES:
            raise HTTPException(413, f"request body holds more than {MAX_JSON_VALUES} JSON values (commas): the bound")
        try:
            return await run_in_threadpool(model.model_validate_json, raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None

    return dependency


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose body `parsed` reads: the body's schema, by reference."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _bound(prop: dict[str, Any], **limits: int) -> None:
    """Set JSON-schema limits on a property, inside `anyOf` where the field is optional."""
    for option in prop.get("anyOf", [prop]):
        if option.get("type") in ("integer", "array"):
            option.update(limits)


def openapi(app: Any, cfg: Config, engine: Any | None) -> dict[str, Any]:
    """The app's OpenAPI document with the body schemas and the bounds of this server's config and `engine`."""
    vocab = int(engine.model.config.vocab_size) if engine is not None else None
    context = engine.max_context if engine is not None else None
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in BODIES:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    limit = cfg.serving.max_new_tokens_limit
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        props = components[name]["properties"]
        props["model"]["enum"] = [cfg.model.name]
        for key in ("max_tokens", "max_completion_tokens", "min_tokens"):
            if key in props:
                _bound(props[key], maximum=limit)
    components["EmbeddingRequest"]["properties"]["model"]["enum"] = [cfg.model.embedding_name]
    if vocab is not None and context is not None:
        for option in components["CompletionRequest"]["properties"]["prompt"]["anyOf"]:
            if option.get("type") == "array":
                option["maxItems"] = min(option.get("maxItems", context), context - 1)
                option["items"] = {"type": "integer", "minimum": 0, "maximum": vocab - 1}
    return doc
