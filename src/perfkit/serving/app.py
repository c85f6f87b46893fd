"""The reference REST server: the OpenAI HTTP API as vLLM serves it, over perfkit's engine.

Any OpenAI-compatible client (the `openai` SDK, vLLM's `bench serve`, guidellm, perfkit's Locust
files) talks to it unchanged, so the same load stages can measure this server or a production one.
A request passes, in order: the body-size limit (413), the client's token bucket (429), validation
(400: malformed JSON, wrong types, unknown roles, a prompt over the context, `max_tokens` over the
limit), the model name (404), the answer cache if `serving.cache.mode` is set (a hit is replayed,
perfkit.serving.cache), the expected-wait bound of the queue (503), then the scheduler. A
bucket that counts generated tokens (`rate_limit.unit: tokens`) is charged after validation, once
`max_tokens` is known. The client key (bearer key, else address) also names the request's line in
the scheduler's queue under fair queueing.
Streaming (`stream: true`) sends one server-sent event per generated token as the decode loop
produces it, `data: [DONE]` last, so a client measures time to first token itself. Bodies are
parsed, and prompts tokenized, in worker threads (`contract`): the event loop only moves bytes.

The process starts listening before the model is loaded: `/healthz` (liveness) answers at once,
`/health` (the name load tools probe) answers 200 only once the models are loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import now, resolve_device
from perfkit.models import Embedder, load_causal_lm
from perfkit.prefix_cache import system_prefix_len
from perfkit.serving import contract, schemas
from perfkit.serving.admission import RateLimited, RateLimiter, Refused, client_key
from perfkit.serving.cache import AnswerCache, Query, answer, chat_semantic, embed_texts, open_for_server
from perfkit.serving.checkpoint import prepare_checkpoint
from perfkit.serving.encoding import ContentEncodingMiddleware
from perfkit.serving.metrics import ServingMetrics
from perfkit.serving.middleware import BodyLimit, Observe, error_response
from perfkit.serving.payload_rest import payload_router
from perfkit.serving.scheduler import GenerationRequest, Scheduler
from perfkit.workload import chat_ids

log = logging.getLogger("perfkit.serving")
# Warm-up prompt: long enough that the prefill price per token it measures is not mostly fixed overhead.
WARMUP_PROMPT = (
    "Summarize in one sentence: the server loads its model, runs one small batch to pay lazy initialisation, "
    "and measures what a prefill and a decode step cost before it reports that it is ready."
)
# Wall-clock time once this module's imports are done: the launcher counts spawn -> here as start-up and imports.
IMPORTED_AT = time.time()


class ApiError(Exception):
    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers


@dataclass
class ServerState:
    """What the routes need; `engine` and `embedder` are None until the models are loaded."""

    cfg: Config
    engine: Engine | None = None
    embedder: Embedder | None = None
    scheduler: Scheduler | None = None
    load_s: float | None = None
    warmup_s: float | None = None
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    answers: AnswerCache | None = None  # serving.cache, once started

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    def startup(self) -> dict[str, float]:
        """The start-up figures the launcher splits a cold start by (`launch.write_port_file`)."""
        return {"imported_at": IMPORTED_AT, "load_s": self.load_s or 0.0, "warmup_s": self.warmup_s or 0.0}


def load_models(cfg: Config) -> tuple[Engine, Embedder]:
    device = resolve_device(cfg.hardware.device)
    model, tokenizer = load_causal_lm(prepare_checkpoint(cfg), device, cfg.serving.dtype)  # the launcher made it already
    embedding = cfg.resolve(cfg.model.embedding_path) if cfg.model.embedding_path else None
    return Engine(model, tokenizer, device), Embedder.load(embedding, device)


async def prepare(state: ServerState, on_ready: Callable[[ServerState], None] | None = None) -> None:
    """Load the models (unless given), warm up if configured, start the scheduler, then call `on_ready`.

    All torch work of the process (loading, warm-up, generation, embeddings) runs on one thread.
    libgomp gives each thread that enters a parallel region its own team of OpenMP threads, and
    once the process holds more OpenMP threads than cores it cuts their spin-wait to 100 spins
    (GOMP_SPINCOUNT): every parallel region then waits for a sleeping thread to be woken, and a
    server with torch threads = cores generates several percent slower than the same engine
    in-process (bench/server_overhead.py shows the difference).
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perfkit-engine")
    loop = asyncio.get_running_loop()
    if state.engine is None or state.embedder is None:
        t0 = now()
        state.engine, state.embedder = await loop.run_in_executor(executor, load_models, state.cfg)
        state.load_s = now() - t0
        log.info("models loaded in %.2f s", state.load_s)
    scheduler = Scheduler.from_config(state.engine, state.cfg.serving, state.metrics, executor)
    if state.cfg.serving.warmup:  # pays lazy initialisation before the first client does (claim C19)
        t0 = now()
        await scheduler.warm_up(state.engine.encode(WARMUP_PROMPT))
        await scheduler.run_exclusive(state.embedder.embed, [WARMUP_PROMPT])
        state.warmup_s = now() - t0
    await scheduler.start()
    state.answers = await open_for_server(state.cfg, state.metrics.registry, scheduler, state.engine, state.embedder)
    state.scheduler = scheduler
    if on_ready is not None:
        on_ready(state)


def _client_key(request: Request) -> str:
    return client_key(request.headers.get("authorization"), request.client.host if request.client else None)


def create_app(
    cfg: Config,
    engine: Engine | None = None,
    embedder: Embedder | None = None,
    on_ready: Callable[[ServerState], None] | None = None,
    on_fail: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app; with `engine` and `embedder` given it serves them, else it loads them from `cfg` at startup."""
    state = ServerState(cfg, engine, embedder)
    rate = cfg.serving.rate_limit
    limiter = RateLimiter(rate.tokens_per_second, rate.burst, unit=rate.unit)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def start() -> None:
            try:
                await prepare(state, on_ready)
            except Exception as exc:
                log.exception("server failed to start")
                if on_fail is not None:
                    on_fail(exc)

        task = asyncio.get_running_loop().create_task(start())
        yield
        task.cancel()
        if state.scheduler is not None:
            await state.scheduler.stop()
        if state.answers is not None:
            await state.answers.close()

    app = FastAPI(title="perfkit", version="1", lifespan=lifespan)
    app.state.perfkit = state
    app.add_middleware(BodyLimit, limit=cfg.serving.max_body_bytes)
    app.add_middleware(ContentEncodingMiddleware, max_decoded_bytes=cfg.serving.max_body_bytes)
    app.add_middleware(Observe, metrics=state.metrics)
    if cfg.serving.payload_routes:  # the transport stage's REST twins of the gRPC payload methods, not a production route
        app.include_router(payload_router(cfg.corpus_dir))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return error_response(400, "; ".join(parts[:5]) or "invalid request")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        code = 429 if isinstance(exc, RateLimited) else 503
        return error_response(code, str(exc), {"Retry-After": exc.retry_after_header})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(500, f"internal error: {type(exc).__name__}")

    def admit(request: Request) -> None:
        # Counted in tokens, a generation is charged in `generation` (its size is known after parsing); an
        # embedding request generates none and costs one.
        if rate.enabled and (rate.unit == "requests" or request.url.path == "/v1/embeddings"):
            limiter.check(_client_key(request))

    def loaded() -> ServerState:
        if not state.ready:
            raise ApiError(503, "the model is loading", {"Retry-After": "1"})
        return state

    def check_model(name: str, served: str) -> None:
        if name != served:
            raise ApiError(404, f"The model `{name}` does not exist; served: {served!r}")

    def generation(
        body: schemas.GenerationBody, prompt_ids: list[int], default_max: int, key: str
    ) -> GenerationRequest:
        engine = state.engine
        assert engine is not None
        limit = cfg.serving.max_new_tokens_limit
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
            raise ApiError(
                400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the context ({engine.max_context})"
            )
        if body.min_tokens > max_tokens:
            raise ApiError(400, f"min_tokens = {body.min_tokens} is above max_tokens = {max_tokens}")
        if 0 < body.min_tokens < max_tokens and not body.ignore_eos:
            raise ApiError(400, "min_tokens must be 0 or equal to max_tokens: the engine masks end-of-sequence per request")
        if rate.enabled and rate.unit == "tokens":
            limiter.check(key, max_tokens)
        fixed = body.ignore_eos or body.min_tokens == max_tokens
        return GenerationRequest(tuple(prompt_ids), max_tokens, stop_at_eos=not fixed, client_key=key, stream=body.stream)

    def cache_query(request: Request, body: Any, req: GenerationRequest, semantic: tuple[str, Any] | None) -> Query | None:
        if state.answers is None:
            return None
        return state.answers.query(_client_key(request), req, body.min_tokens, body.ignore_eos, body.temperature, semantic)

    async def run(
        req: GenerationRequest, body: schemas.GenerationBody, build: Callable[..., dict[str, Any]], rid: str,
        query: Query | None = None,
    ) -> Response:
        scheduler = state.scheduler
        assert scheduler is not None
        submit = lambda: scheduler.submit(req)  # noqa: E731 -- QueueFull -> 503 before anything is sent
        route = "chat" if build is chat_chunk else "completions"
        headers, events = await answer(state.answers, route, "rest", query, submit)
        prompt_tokens = len(req.prompt_ids)
        if body.stream:
            usage_last = schemas.wants_usage_chunk(body)
            sse = _sse(events, build, rid, prompt_tokens, usage_last)
            return StreamingResponse(sse, media_type="text/event-stream", headers=headers)
        text, count, finish = [], 0, None
        async for ev in events:
            text.append(ev.text)
            count, finish = ev.index + 1, ev.finish_reason
        return JSONResponse(build(rid, "".join(text), finish, schemas.usage(prompt_tokens, count), chunk=False), headers=headers)

    async def _sse(
        events: AsyncIterator[Any], build: Callable[..., dict[str, Any]], rid: str, prompt_tokens: int, usage_last: bool
    ) -> AsyncIterator[str]:
        count = 0
        try:
            async for ev in events:
                count = ev.index + 1
                extra = {"first": ev.index == 0} if build is chat_chunk else {}
                yield "data: " + json.dumps(build(rid, ev.text, ev.finish_reason, None, chunk=True, **extra)) + "\n\n"
            if usage_last:
                last = schemas.usage_chunk(rid, cfg.model.name, build is chat_chunk, schemas.usage(prompt_tokens, count))
                yield "data: " + json.dumps(last) + "\n\n"
        except Exception as exc:  # headers are gone: the error travels as an event, as vLLM does
            log.exception("stream failed")
            yield "data: " + json.dumps(schemas.error_body(500, f"generation failed: {type(exc).__name__}")) + "\n\n"
        yield "data: [DONE]\n\n"

    def completion(rid: str, text: str, finish: str | None, use: Any, chunk: bool) -> dict[str, Any]:
        return schemas.completion_object(rid, cfg.model.name, text, finish, use, chunk)

    def chat_chunk(rid: str, text: str, finish: str | None, use: Any, chunk: bool, first: bool = False) -> dict[str, Any]:
        return schemas.chat_object(rid, cfg.model.name, text, finish, use, chunk, first)

    completion_body = Depends(contract.parsed(schemas.CompletionRequest))
    chat_body = Depends(contract.parsed(schemas.ChatCompletionRequest))
    embedding_body = Depends(contract.parsed(schemas.EmbeddingRequest))

    @app.post("/v1/completions", dependencies=[Depends(admit)], openapi_extra=contract.body_doc(schemas.CompletionRequest))
    async def completions(
        request: Request, body: schemas.CompletionRequest = completion_body, s: ServerState = Depends(loaded)
    ) -> Response:
        check_model(body.model, cfg.model.name)
        assert s.engine is not None
        ids = await run_in_threadpool(s.engine.encode, body.prompt) if isinstance(body.prompt, str) else list(body.prompt)
        req = generation(body, ids, default_max=16, key=_client_key(request))
        semantic = (body.prompt, "completion") if isinstance(body.prompt, str) else None
        return await run(req, body, completion, schemas.new_id("cmpl"), cache_query(request, body, req, semantic))

    chat_doc = contract.body_doc(schemas.ChatCompletionRequest)

    @app.post("/v1/chat/completions", dependencies=[Depends(admit)], openapi_extra=chat_doc)
    async def chat_completions(
        request: Request, body: schemas.ChatCompletionRequest = chat_body, s: ServerState = Depends(loaded)
    ) -> Response:
        check_model(body.model, cfg.model.name)
        assert s.engine is not None
        messages = [m.for_template() for m in body.messages]
        try:
            ids = await run_in_threadpool(chat_ids, s.engine.tokenizer, messages)
        except Exception as exc:  # the chat template refused this conversation
            raise ApiError(400, f"cannot apply the chat template: {exc}") from None
        req = generation(body, ids, default_max=cfg.serving.max_new_tokens_limit, key=_client_key(request))
        req = replace(req, prefix_len=system_prefix_len(s.engine, messages, ids))
        semantic = chat_semantic(messages)  # the last user message, in the context of the conversation before it
        return await run(req, body, chat_chunk, schemas.new_id("chatcmpl"), cache_query(request, body, req, semantic))

    @app.post("/v1/embeddings", dependencies=[Depends(admit)], openapi_extra=contract.body_doc(schemas.EmbeddingRequest))
    async def embeddings(
        request: Request, body: schemas.EmbeddingRequest = embedding_body, s: ServerState = Depends(loaded)
    ) -> Response:
        check_model(body.model, cfg.model.embedding_name)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        assert s.embedder is not None and s.scheduler is not None
        headers, vectors, tokens = await embed_texts(s.answers, s.scheduler, s.embedder, _client_key(request), texts, "rest")
        out = await run_in_threadpool(schemas.embedding_json, vectors, body.encoding_format, cfg.model.embedding_name, tokens)
        return Response(out, media_type="application/json", headers=headers)

    app.openapi = lambda: contract.openapi(app, cfg, state.engine)  # type: ignore[method-assign]

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        context = state.engine.max_context if state.engine is not None else None
        return {
            "object": "list",
            "data": [
                {"id": cfg.model.name, "object": "model", "created": 0, "owned_by": "perfkit", "max_model_len": context},
                {"id": cfg.model.embedding_name, "object": "model", "created": 0, "owned_by": "perfkit"},
            ],
        }

    @app.get("/health")
    async def health() -> Response:
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", "load_s": state.load_s, "scheduler": cfg.serving.scheduler})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    admitted = [r.path for r in app.routes if isinstance(r, APIRoute) and any(d.dependency is admit for d in r.dependencies)]
    state.metrics.expect_refusals(admitted)
    return app
