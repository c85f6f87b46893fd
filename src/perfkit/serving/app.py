"""The reference REST server: the OpenAI HTTP API as vLLM serves it, over perfkit's engine.

Any OpenAI-compatible client (the `openai` SDK, vLLM's `bench serve`, guidellm, perfkit's Locust
files) talks to it unchanged, so the same load stages can measure this server or a production one.
A request passes the body-size limit (413) and content decoding (`middleware`, `encoding`), then its
route (`routes`: the token bucket, validation, the answer cache, the queue bound, the scheduler);
every refusal answers in the OpenAI error shape. Bodies are parsed, and prompts tokenized, in worker
threads (`contract`): the event loop only moves bytes.

The process starts listening before the model is loaded: `/healthz` (liveness) answers at once,
`/health` (the name load tools probe) answers 200 only once the models are loaded and warmed up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.models import Embedder
from perfkit.serving import contract
from perfkit.serving.encoding import ContentEncodingMiddleware
from perfkit.serving.middleware import BodyLimit, Observe, add_error_handlers, log
from perfkit.serving.payload_rest import payload_router
from perfkit.serving.routes import openai_router, probe_router
from perfkit.serving.state import ServerState, prepare


def create_app(
    cfg: Config,
    engine: Engine | None = None,
    embedder: Embedder | None = None,
    on_ready: Callable[[ServerState], None] | None = None,
    on_fail: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app; with `engine` and `embedder` given it serves them, else it loads them from `cfg` at startup."""
    state = ServerState(cfg, engine, embedder)

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
    add_error_handlers(app)
    app.include_router(openai_router(state))
    app.include_router(probe_router(state))
    if cfg.serving.payload_routes:  # the transport stage's REST twins of the gRPC payload methods, not a production route
        app.include_router(payload_router(cfg.corpus_dir))
    app.openapi = lambda: contract.openapi(app, cfg, state.engine)  # type: ignore[method-assign]
    return app
