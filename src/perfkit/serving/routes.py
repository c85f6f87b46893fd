"""The HTTP routes of the reference server: the OpenAI API (completions, chat completions, embeddings, models) as
vLLM serves it, and the operator's probes (`/health`, `/healthz`, `/metrics`).

A generation request passes, in order: the client's token bucket (429), validation (400), the model name (404), the
answer cache if one is set (a hit is replayed), the expected-wait bound of the queue (503), then the scheduler; a bucket
that counts generated tokens is charged after validation, once `max_tokens` is known. Streaming sends one server-sent
event per generated token as the decode loop produces it, `data: [DONE]` last.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from perfkit.serving import contract, schemas
from perfkit.serving.admission import RateLimiter, client_key
from perfkit.serving.cache import Query, answer, chat_semantic, embed_texts
from perfkit.serving.middleware import ApiError, log
from perfkit.serving.state import ServerState
from perfkit.serving.work import GenerationRequest
from perfkit.workload import chat_ids


def _client_key(request: Request) -> str:
    return client_key(request.headers.get("authorization"), request.client.host if request.client else None)


def _check_model(name: str, served: str) -> None:
    if name != served:
        raise ApiError(404, f"The model `{name}` does not exist; served: {served!r}")


def _generation(
    state: ServerState, limiter: RateLimiter, body: schemas.GenerationBody, prompt_ids: list[int], default_max: int, key: str
) -> GenerationRequest:
    """The request the scheduler runs, or a 400 naming what is wrong; a bucket counted in tokens is charged here."""
    engine, serving = state.engine, state.cfg.serving
    assert engine is not None
    limit = serving.max_new_tokens_limit
    vocab = int(engine.model.config.vocab_size)
    if not prompt_ids:
        raise ApiError(400, "the prompt is empty")
    if any(not 0 <= t < vocab for t in prompt_ids):
        raise ApiError(400, f"prompt token ids must lie in [0, {vocab})")
    room = engine.max_context - len(prompt_ids)
    if room < 1:
        raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens; the model's context is {engine.max_context}")
    max_tokens = body.max_tokens or getattr(body, "max_completion_tokens", None) or min(default_max, limit, room)
    if max_tokens > limit:
        raise ApiError(400, f"max_tokens = {max_tokens} is above serving.max_new_tokens_limit = {limit}")
    if max_tokens > room:
        raise ApiError(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the context ({engine.max_context})")
    if body.min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens = {body.min_tokens} is above max_tokens = {max_tokens}")
    if 0 < body.min_tokens < max_tokens and not body.ignore_eos:
        raise ApiError(400, "min_tokens must be 0 or equal to max_tokens: the engine masks end-of-sequence per request")
    if serving.rate_limit.enabled and serving.rate_limit.unit == "tokens":
        limiter.check(key, max_tokens)
    fixed = body.ignore_eos or body.min_tokens == max_tokens
    return GenerationRequest(tuple(prompt_ids), max_tokens, stop_at_eos=not fixed, client_key=key, stream=body.stream)


def _cache_query(state: ServerState, request: Request, body: Any, req: GenerationRequest, semantic: tuple[str, Any] | None) -> Query | None:
    if state.answers is None:
        return None
    return state.answers.query(_client_key(request), req, body.min_tokens, body.ignore_eos, body.temperature, semantic)


def _answer_object(
    model: str, chat: bool, rid: str, text: str, finish: str | None, use: Any, chunk: bool, first: bool = False
) -> dict[str, Any]:
    if chat:
        return schemas.chat_object(rid, model, text, finish, use, chunk, first)
    return schemas.completion_object(rid, model, text, finish, use, chunk)


async def _respond(
    state: ServerState, req: GenerationRequest, body: schemas.GenerationBody, chat: bool, rid: str, query: Query | None
) -> Response:
    """Run `req` (or replay the cached answer) and answer it whole, or as server-sent events when it streams."""
    scheduler, model = state.scheduler, state.cfg.model.name
    assert scheduler is not None
    submit = lambda: scheduler.submit(req)  # noqa: E731 -- QueueFull -> 503 before anything is sent
    headers, events = await answer(state.answers, "chat" if chat else "completions", "rest", query, submit)
    prompt_tokens = len(req.prompt_ids)
    if body.stream:
        sse = _sse(events, model, chat, rid, prompt_tokens, schemas.wants_usage_chunk(body))
        return StreamingResponse(sse, media_type="text/event-stream", headers=headers)
    text, count, finish = [], 0, None
    async for ev in events:
        text.append(ev.text)
        count, finish = ev.index + 1, ev.finish_reason
    whole = _answer_object(model, chat, rid, "".join(text), finish, schemas.usage(prompt_tokens, count), chunk=False)
    return JSONResponse(whole, headers=headers)


async def _sse(events: AsyncIterator[Any], model: str, chat: bool, rid: str, prompt_tokens: int, usage_last: bool) -> AsyncIterator[str]:
    count = 0
    try:
        async for ev in events:
            count = ev.index + 1
            piece = _answer_object(model, chat, rid, ev.text, ev.finish_reason, None, chunk=True, first=ev.index == 0)
            yield "data: " + json.dumps(piece) + "\n\n"
        if usage_last:
            last = schemas.usage_chunk(rid, model, chat, schemas.usage(prompt_tokens, count))
            yield "data: " + json.dumps(last) + "\n\n"
    except Exception as exc:  # headers are gone: the error travels as an event, as vLLM does
        log.exception("stream failed")
        yield "data: " + json.dumps(schemas.error_body(500, f"generation failed: {type(exc).__name__}")) + "\n\n"
    yield "data: [DONE]\n\n"


def openai_router(state: ServerState) -> APIRouter:
    """The OpenAI API over `state`; the admitted routes are told to the metrics (their refusals are counted)."""
    cfg = state.cfg
    rate = cfg.serving.rate_limit
    limiter = RateLimiter(rate.tokens_per_second, rate.burst, unit=rate.unit)
    router = APIRouter()

    def admit(request: Request) -> None:
        # Counted in tokens, a generation is charged in `_generation` (its size is known after parsing); an
        # embedding request generates none and costs one.
        if rate.enabled and (rate.unit == "requests" or request.url.path == "/v1/embeddings"):
            limiter.check(_client_key(request))

    def loaded() -> ServerState:
        if not state.ready:
            raise ApiError(503, "the model is loading", {"Retry-After": "1"})
        return state

    completion_body = Depends(contract.parsed(schemas.CompletionRequest))
    chat_body = Depends(contract.parsed(schemas.ChatCompletionRequest))
    embedding_body = Depends(contract.parsed(schemas.EmbeddingRequest))

    @router.post("/v1/completions", dependencies=[Depends(admit)], openapi_extra=contract.body_doc(schemas.CompletionRequest))
    async def completions(
        request: Request, body: schemas.CompletionRequest = completion_body, s: ServerState = Depends(loaded)
    ) -> Response:
        _check_model(body.model, cfg.model.name)
        assert s.engine is not None
        ids = await run_in_threadpool(s.engine.encode, body.prompt) if isinstance(body.prompt, str) else list(body.prompt)
        req = _generation(s, limiter, body, ids, default_max=16, key=_client_key(request))
        semantic = (body.prompt, "completion") if isinstance(body.prompt, str) else None
        return await _respond(s, req, body, False, schemas.new_id("cmpl"), _cache_query(s, request, body, req, semantic))

    @router.post("/v1/chat/completions", dependencies=[Depends(admit)], openapi_extra=contract.body_doc(schemas.ChatCompletionRequest))
    async def chat_completions(
        request: Request, body: schemas.ChatCompletionRequest = chat_body, s: ServerState = Depends(loaded)
    ) -> Response:
        _check_model(body.model, cfg.model.name)
        assert s.engine is not None
        messages = [m.for_template() for m in body.messages]
        try:
            ids = await run_in_threadpool(chat_ids, s.engine.tokenizer, messages)
        except Exception as exc:  # the chat template refused this conversation
            raise ApiError(400, f"cannot apply the chat template: {exc}") from None
        req = _generation(s, limiter, body, ids, default_max=cfg.serving.max_new_tokens_limit, key=_client_key(request))
        semantic = chat_semantic(messages)  # the last user message, in the context of the conversation before it
        return await _respond(s, req, body, True, schemas.new_id("chatcmpl"), _cache_query(s, request, body, req, semantic))

    @router.post("/v1/embeddings", dependencies=[Depends(admit)], openapi_extra=contract.body_doc(schemas.EmbeddingRequest))
    async def embeddings(request: Request, body: schemas.EmbeddingRequest = embedding_body, s: ServerState = Depends(loaded)) -> Response:
        _check_model(body.model, cfg.model.embedding_name)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        assert s.embedder is not None and s.scheduler is not None
        headers, vectors, tokens = await embed_texts(s.answers, s.scheduler, s.embedder, _client_key(request), texts, "rest")
        out = await run_in_threadpool(schemas.embedding_json, vectors, body.encoding_format, cfg.model.embedding_name, tokens)
        return Response(out, media_type="application/json", headers=headers)

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        context = state.engine.max_context if state.engine is not None else None
        return {
            "object": "list",
            "data": [
                {"id": cfg.model.name, "object": "model", "created": 0, "owned_by": "perfkit", "max_model_len": context},
                {"id": cfg.model.embedding_name, "object": "model", "created": 0, "owned_by": "perfkit"},
            ],
        }

    admitted = [r.path for r in router.routes if isinstance(r, APIRoute) and any(d.dependency is admit for d in r.dependencies)]
    state.metrics.expect_refusals(admitted)
    return router


def probe_router(state: ServerState) -> APIRouter:
    """Liveness (at once), readiness (once the models are loaded and warmed up) and the Prometheus metrics."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", "load_s": state.load_s, "scheduler": state.cfg.serving.scheduler})

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    return router
